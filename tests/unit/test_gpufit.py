"""gpufit: one rule for "does this GPU (or this pool's GPU) offer what the job asks", table-style.

Guards against: a job asking the size printed on the box (gpu_memory_gb: 24) never fitting the card
that box holds, because the card reports usable MiB (an L4 prints 23034 MiB, less than 24*1000 and
less than 24*1024); `gpu_type: L4` matching an L40S or `A10` matching an A100 (substring match);
the pool planner and placement disagreeing about the same card.
"""

from __future__ import annotations

import pytest

from gridctl import gpufit
from gridctl.gpufit import marketed_gb, pool_shortfall, type_matches
from gridctl.spec import GpuSpec

# (nvidia-smi name, memory.total MiB it prints, marketed GB, the next marketed size up)
CARDS = [
    ("Tesla T4", 15360, 16, 24),
    ("NVIDIA L4", 23034, 24, 32),
    ("NVIDIA A10G", 23028, 24, 32),
    ("NVIDIA L40S", 46068, 48, 80),
    ("NVIDIA A100-SXM4-40GB", 40960, 40, 48),
    ("NVIDIA A100-SXM4-80GB", 81920, 80, 94),
    ("NVIDIA H100 80GB HBM3", 81559, 80, 94),
    ("NVIDIA H100 NVL", 95830, 94, 141),
    ("NVIDIA H200", 143771, 141, 180),
    ("NVIDIA B200", 183359, 180, 192),
]
# what older drivers print for the same cards (the driver reserves a little more)
OLDER_DRIVERS = [
    ("Tesla T4", 15109, 16),
    ("NVIDIA A100-SXM4-40GB", 40536, 40),
    ("NVIDIA A100-SXM4-80GB", 81251, 80),
]


@pytest.mark.parametrize("name, mib, gb, _next", CARDS, ids=[c[0] for c in CARDS])
def test_each_card_is_read_as_the_size_it_is_sold_as(name, mib, gb, _next):
    assert marketed_gb(mib, name) == gb


@pytest.mark.parametrize("name, mib, gb, _next", CARDS, ids=[c[0] for c in CARDS])
def test_the_size_is_the_same_without_the_name(name, mib, gb, _next):
    assert marketed_gb(mib, "") == gb


@pytest.mark.parametrize("name, mib, gb", OLDER_DRIVERS, ids=[f"{c[0]}-{c[1]}" for c in OLDER_DRIVERS])
def test_older_drivers_reporting_a_little_less_read_the_same(name, mib, gb):
    assert marketed_gb(mib, name) == gb


@pytest.mark.parametrize("name, mib, gb, bigger", CARDS, ids=[c[0] for c in CARDS])
def test_a_request_for_the_marketed_size_fits_its_own_card_and_the_next_size_up_does_not(name, mib, gb, bigger):
    assert gpufit.gpu_fits(None, gb, name, mib)
    assert not gpufit.gpu_fits(None, bigger, name, mib)
    assert not gpufit.gpu_fits(None, gb + 0.5, name, mib)


def test_the_table_matches_the_cards_listed_here():
    assert {(c.smi_name, c.reported_mib, c.marketed_gb) for c in gpufit.CARDS} == {c[:3] for c in CARDS}


def test_l4_reporting_23034_mib_fits_a_24_gb_request():
    assert gpufit.gpu_fits("L4", 24, "NVIDIA L4", 23034)


def test_unknown_memory_never_fits_a_memory_request_but_fits_one_without():
    assert marketed_gb(None, "NVIDIA L4") is None
    assert not gpufit.gpu_fits(None, 24, "NVIDIA L4", None)
    assert gpufit.gpu_fits("L4", None, "NVIDIA L4", None)


def test_a_known_name_reporting_far_less_than_the_card_is_read_from_its_mib():
    # a vGPU or partitioned device can carry the full card's name; the size must come from what it reports
    assert marketed_gb(20480, "NVIDIA H100 80GB HBM3") == 20


@pytest.mark.parametrize("mib, gb", [(24576, 24), (8192, 8), (12288, 12), (30000, 29), (1_000_000, 976)])
def test_unknown_cards_round_up_only_to_a_nearby_marketed_size(mib, gb):
    assert marketed_gb(mib, "Some Future GPU") == gb


TYPES = [
    ("H100", "NVIDIA H100 80GB HBM3", True),
    ("h100", "NVIDIA H100 PCIe", True),
    ("NVIDIA H100", "NVIDIA H100 80GB HBM3", True),
    ("T4", "Tesla T4", True),
    ("L4", "NVIDIA L4", True),
    ("A100 80GB", "NVIDIA A100-SXM4-80GB", True),
    ("A100-80GB", "NVIDIA A100 80GB PCIe", True),
    ("L4", "NVIDIA L40S", False),
    ("A10", "NVIDIA A100-SXM4-40GB", False),
    ("A10", "NVIDIA A10G", False),
    ("H100", "NVIDIA GH200 480GB", False),
    ("A100 80GB", "NVIDIA A100-SXM4-40GB", False),
    ("H100", "", False),
    (None, "NVIDIA L4", True),
    ("", "NVIDIA L4", True),
]


@pytest.mark.parametrize("wanted, name, ok", TYPES, ids=[f"{t[0]}~{t[1]}" for t in TYPES])
def test_gpu_type_matches_whole_words_of_the_name(wanted, name, ok):
    assert type_matches(wanted, name) is ok


# ---------------------------------------------------------------- pools: the same rule against a pool's spec

def test_a_24_gb_request_fits_an_l4_pool_and_a_48_gb_request_does_not():
    pool = GpuSpec(type="L4", count=1, memory_gb=24)
    assert pool_shortfall(1, "L4", 24, pool) is None
    assert pool_shortfall(1, None, 48, pool) == "1xL4 24GB per instance, 48GB asked"


def test_a_pool_without_memory_gb_offers_the_size_of_its_card():
    assert pool_shortfall(1, None, 24, GpuSpec(type="L4", count=1)) is None
    assert pool_shortfall(1, None, 32, GpuSpec(type="L4", count=1)) == "1xL4 24GB per instance, 32GB asked"


def test_a_pool_whose_type_comes_in_several_sizes_and_says_none_fits_no_memory_request():
    assert pool_shortfall(1, None, 40, GpuSpec(type="A100", count=8)) == "8xA100 (memory unknown) per instance, 40GB asked"
    assert pool_shortfall(1, None, None, GpuSpec(type="A100", count=8)) is None


def test_a_pool_claiming_more_memory_than_its_card_has_offers_what_the_card_has():
    # instances of an L4 pool report 23034 MiB whatever the spec says: growing it for 48 GB would never end
    assert gpufit.pool_gpu_gb("L4", 48) == 24
    assert pool_shortfall(1, None, 48, GpuSpec(type="L4", count=1, memory_gb=48)) == "1xL4 24GB per instance, 48GB asked"


def test_a_pool_of_an_unknown_card_offers_what_its_spec_says():
    assert gpufit.pool_gpu_gb("MI300X", 192) == 192
    assert pool_shortfall(1, None, 192, GpuSpec(type="MI300X", count=8, memory_gb=192)) is None


@pytest.mark.parametrize("gpus, gpu_type, memory_gb, why", [
    (2, None, None, "1xL4 per instance, 2 GPUs asked"),
    (1, "H100", None, "1xL4 per instance, H100 asked"),
    (1, "L40S", None, "1xL4 per instance, L40S asked"),
    (1, "L4", 24, None),
    (0, None, None, None),
])
def test_pool_shortfall_names_what_the_pool_lacks(gpus, gpu_type, memory_gb, why):
    assert pool_shortfall(gpus, gpu_type, memory_gb, GpuSpec(type="L4", count=1, memory_gb=24)) == why


@pytest.mark.parametrize("name, mib, gb, _next", CARDS, ids=[c[0] for c in CARDS])
def test_placement_and_pools_agree_on_every_card(name, mib, gb, _next):
    """A pool of this card grows for a request exactly when one of its instances could run it."""
    card = next(c for c in gpufit.CARDS if c.smi_name == name)
    pool = GpuSpec(type=card.model, count=1, memory_gb=gb)
    for asked in (gb / 2, gb, gb + 1, _next):
        assert (pool_shortfall(1, card.model, asked, pool) is None) == gpufit.gpu_fits(card.model, asked, name, mib)


# ---------------------------------------------------------------- the simulator reports what real cards report

def test_the_simulator_writes_what_real_cards_print():
    from providers.local import sim_card
    for card in gpufit.CARDS:
        assert sim_card(card.model, card.marketed_gb) == (card.smi_name, card.reported_mib)


def test_the_simulator_reads_back_as_the_size_it_was_asked_for_on_unknown_cards():
    from providers.local import sim_card
    name, mib = sim_card("X9", 32)
    assert (name, marketed_gb(mib, name)) == ("NVIDIA X9", 32)
