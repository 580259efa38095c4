"""bench.machine: the CPU line every bench figure is printed with."""

from __future__ import annotations

from bench.machine import describe

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_vnni avx512_bf16
processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_vnni avx512_bf16
"""


def test_reads_the_model_and_the_kernel_flags_it_knows(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    machine = describe(path)
    assert machine.cpu == "Intel(R) Xeon(R) Processor"
    assert machine.flags == ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")  # fma, avx512bw: not kernel choices
    assert machine.summary().endswith("avx2 avx512f avx512_vnni avx512_bf16")


def test_without_cpuinfo_it_still_names_the_platform(tmp_path):
    machine = describe(tmp_path / "absent")
    assert machine.cpu and machine.cpus >= 1 and machine.flags == ()
    assert "no AVX2/AVX-512" in machine.summary()
