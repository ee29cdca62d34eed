import numpy as np
import pytest

from hwcomp.lower.mcu.memory_plan import ALIGNMENT, Buffer, check_plan, plan_arena


def test_chain_reuses_dead_buffers():
    # a -> b -> c -> d: only producer and consumer are live together.
    buffers = [Buffer(n, 1000, i, i + 1) for i, n in enumerate("abcd")]
    plan = plan_arena(buffers, [("a", "b"), ("b", "c"), ("c", "d")])
    check_plan(buffers, plan)
    assert plan.arena_bytes == 2 * 1008  # 1000 rounded to 16
    assert plan.largest_step_bytes == plan.arena_bytes == plan.largest_pair_bytes
    assert plan.total_bytes == 4 * 1008
    assert all(offset % ALIGNMENT == 0 for offset in plan.offsets.values())


def test_residual_keeps_its_skip_tensor_alive():
    # x is read again three steps later (a residual add): three buffers are live at once.
    buffers = [Buffer("x", 512, 0, 3), Buffer("y", 512, 1, 2), Buffer("z", 512, 2, 3)]
    plan = plan_arena(buffers)
    check_plan(buffers, plan)
    assert plan.arena_bytes == 3 * 512


def test_random_lifetimes_never_share_live_bytes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        buffers = []
        for i in range(int(rng.integers(1, 12))):
            first = int(rng.integers(0, 10))
            buffers.append(Buffer(f"b{i}", int(rng.integers(1, 5000)), first,
                                  first + int(rng.integers(0, 4))))
        plan = plan_arena(buffers)
        check_plan(buffers, plan)
        assert plan.largest_step_bytes <= plan.arena_bytes <= plan.total_bytes


def test_check_plan_catches_an_overlap():
    # The negative case: the checker is what the random test relies on, so it must fail.
    buffers = [Buffer("a", 64, 0, 1), Buffer("b", 64, 1, 2)]
    plan = plan_arena(buffers)
    broken = type(plan)({"a": 0, "b": 0}, 128, 128, 128, 128)
    with pytest.raises(AssertionError, match="overlap"):
        check_plan(buffers, broken)
    assert plan.offsets["a"] != plan.offsets["b"]


def test_elementwise_outputs_written_in_place_share_their_input_bytes():
    # x -> relu(x) -> quantize: each elementwise step overwrites the input that dies there.
    buffers = [Buffer("x", 800, 0, 1), Buffer("r", 800, 1, 2), Buffer("q", 800, 2, 3),
               Buffer("other", 800, 0, 3)]
    in_place = {"r": "x", "q": "r"}
    plan = plan_arena(buffers, [("x", "r"), ("r", "q")], in_place)
    check_plan(buffers, plan, in_place)
    assert plan.offsets["x"] == plan.offsets["r"] == plan.offsets["q"] != plan.offsets["other"]
    assert plan.arena_bytes == 2 * 800 and plan.in_place == 2
    assert plan.total_bytes == 4 * 800  # the sum of activations counts every tensor
    # Without the pairs the chain needs two slots besides "other".
    assert plan_arena(buffers).arena_bytes == 3 * 800
    with pytest.raises(AssertionError):  # the checker does not accept an undeclared share
        check_plan(buffers, plan)


def test_in_place_needs_the_input_to_die_where_the_output_is_born():
    buffers = [Buffer("x", 800, 0, 2), Buffer("r", 800, 1, 2)]
    with pytest.raises(ValueError, match="r cannot be written over x"):
        plan_arena(buffers, in_place={"r": "x"})
