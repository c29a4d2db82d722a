"""Depth windows: block stacks as a split axis (``Blocks``), planned by the same double shifting,
aggregated over those who held each block, and evaluated by the expectation rule."""

import numpy as np
import pytest
import torch
from torch import nn

from msfusion_core.data.tensors import TensorData
from msfusion_core.local.participant import Participant
from msfusion_core.local.augment import token_ids
from msfusion_core.local.training import TrainConfig
from msfusion_core.method.aggregate import Contribution, scatter_average
from msfusion_core.method.overlap import ConstantOverlap
from msfusion_core.method.planner import MSfusionPlanner, ParticipantPlan, make_planner
from msfusion_core.method.server import Reply, SubmodelServer
from msfusion_core.method.slicing import Slicer, map_previous
from msfusion_core.method.split_map import Blocks, group_sizes, model_shapes, model_state
from msfusion_core.method.submodel import build_submodel
from msfusion_core.models import get_family

L = 8  # blocks
D = L + 1  # stream width: coordinate 0 is read by every branch, i + 1 written by block i


class Branch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(D, D, bias=False)
        self.out = nn.Linear(D, D, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.inner(h))


class Residual(nn.Module):
    """x → inp → L blocks h + f_i(h) → head."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, D, bias=False)
        self.blocks = nn.ModuleList([Branch() for _ in range(L)])
        self.head = nn.Linear(D, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


SPLIT = {"blocks": Blocks(("out.weight",))}


def linear_branches() -> dict[str, torch.Tensor]:
    """Branch i reads stream coordinate 0 and writes coordinate i + 1 only: no branch reads what
    another wrote, so the model is affine in each block's inclusion."""
    torch.manual_seed(0)
    state = model_state(Residual())
    for i in range(L):
        inner, out = torch.zeros(D, D), torch.zeros(D, D)
        inner[0, 0] = 1.0
        out[i + 1, 0] = float(torch.randn(()))
        state[f"blocks.{i}.inner.weight"], state[f"blocks.{i}.out.weight"] = inner, out
    return state


def depth_plan(server_round: int, participants: int, capacity: float, overlap: float = 0.5):
    sizes = group_sizes(model_shapes(Residual()), SPLIT)
    planner = MSfusionPlanner(ConstantOverlap(overlap), depth_share=1.0)
    return planner, planner.plan(server_round, [(n, capacity) for n in range(participants)], sizes), sizes


def test_the_stack_is_a_depth_group_of_one_unit_per_block():
    sizes = group_sizes(model_shapes(Residual()), SPLIT)
    assert dict(sizes) == {"blocks": L} and sizes.depth == {"blocks"}


@pytest.mark.parametrize("capacity,participants", [(0.25, 8), (0.25, 3), (0.125, 5), (0.5, 2)])
def test_depth_windows_are_consecutive_blocks_and_cover_every_block_over_rounds(capacity, participants):
    seen = np.zeros(L, dtype=int)
    for t in range(1, 4 * L + 1):
        _, plan, sizes = depth_plan(t, participants, capacity)
        for pp in plan.participants.values():
            window = pp.groups["blocks"]
            held = window.indices()
            assert len(held) == round(capacity * L)
            assert all((b - a) % L == 1 for a, b in zip(held, held[1:]))  # consecutive, cyclically
            seen[held] += 1
            # The compact plan round-trips.
            assert ParticipantPlan.from_compact(pp.to_compact(), sizes).unit_indices()["blocks"].tolist() == held.tolist()
    assert (seen > 0).all(), seen


def test_windows_shift_across_participants_and_rounds():
    _, plan1, _ = depth_plan(1, 8, 0.25)
    _, plan2, _ = depth_plan(2, 8, 0.25)
    starts1 = [pp.groups["blocks"].start for pp in plan1.participants.values()]
    assert len(set(starts1)) == 8  # spread: every participant a different window
    assert starts1 != [pp.groups["blocks"].start for pp in plan2.participants.values()]  # shifted by round


def test_a_submodel_holds_only_its_blocks_renumbered_in_order():
    server = SubmodelServer(Residual, SPLIT, make_planner("msfusion-depth"))
    plan = server.plan_round(7, [(n, 0.25) for n in range(8)])
    for pp in plan.participants.values():
        held = sorted(pp.indices("blocks").tolist())
        down = server.download(pp)
        assert sorted(k for k in down if k.startswith("blocks.")) == sorted(f"blocks.{j}.{w}.weight" for j in range(2) for w in ("inner", "out"))
        for j, i in enumerate(held):
            assert torch.equal(down[f"blocks.{j}.out.weight"], server.state[f"blocks.{i}.out.weight"])
        sub = build_submodel(Residual, down, stacks=server.slicer.stacks)
        assert len(sub.blocks) == 2
        full_params = sum(p.numel() for p in Residual().parameters())
        assert sum(p.numel() for p in sub.parameters()) == full_params - 6 * 2 * D * D
        assert sub(torch.randn(5, 4)).shape == (5, 3)


def test_the_server_checks_a_reply_against_the_blocks_its_plan_holds():
    server = SubmodelServer(Residual, SPLIT, make_planner("msfusion-depth"))
    plan = server.plan_round(1, [(0, 0.25), (1, 0.25)])
    reply = dict(server.download(plan.participants[0]))
    server.validate(plan.participants[0], Reply(0, reply, 10))
    reply["blocks.2.out.weight"] = reply["blocks.1.out.weight"]  # a block the window does not have
    with pytest.raises(ValueError, match="blocks.2.out.weight"):
        server.validate(plan.participants[0], Reply(0, reply, 10))


def test_blocks_are_averaged_over_those_who_held_them_against_a_brute_force_reference():
    server = SubmodelServer(Residual, SPLIT, make_planner("msfusion-depth"))
    before = {k: v.clone() for k, v in server.state.items()}
    plan = server.plan_round(3, [(n, 0.25) for n in range(3)])  # 3 windows of 2: some blocks held by nobody
    gen = torch.Generator().manual_seed(1)
    replies = []
    for n, pp in plan.participants.items():
        state = {k: v + torch.randn(v.shape, generator=gen) for k, v in server.download(pp).items()}
        replies.append(Reply(n, state, 10 * (n + 1)))
    server.aggregate(plan, replies)
    for key, theta in before.items():
        num, den = torch.zeros_like(theta), 0.0
        for r in replies:
            units = plan.participants[r.node_id].unit_indices()
            local = server.slicer.local_key(key, units)
            if local is not None:
                num += r.num_examples * r.state[local]
                den += r.num_examples
        expected = num / den if den else theta
        torch.testing.assert_close(server.state[key], expected, rtol=1e-5, atol=1e-6)
    never = [i for i in range(L) if not any(i in pp.indices("blocks") for pp in plan.participants.values())]
    assert never and all(torch.equal(server.state[f"blocks.{i}.out.weight"], before[f"blocks.{i}.out.weight"]) for i in never)


def test_scatter_average_skips_contributions_without_the_tensor():
    slicer = Slicer(SPLIT)
    state = {"blocks.0.out.weight": torch.zeros(2, 2), "head.weight": torch.zeros(2)}
    a = Contribution({"blocks": np.array([0])}, {"blocks.0.out.weight": torch.ones(2, 2), "head.weight": torch.ones(2)}, 1.0)
    b = Contribution({"blocks": np.array([1])}, {"head.weight": 3 * torch.ones(2)}, 1.0)
    result = scatter_average(state, [a, b], slicer, list(state))
    assert torch.equal(result.state["blocks.0.out.weight"], torch.ones(2, 2))
    assert torch.equal(result.state["head.weight"], 2 * torch.ones(2))


@pytest.mark.parametrize("participants,capacity", [(8, 0.25), (4, 0.25), (8, 0.5)])
def test_the_evaluated_model_is_the_mean_of_the_rounds_submodels_for_linear_branches(participants, capacity):
    server = SubmodelServer(Residual, SPLIT, MSfusionPlanner(ConstantOverlap(0.0 if participants == 4 else 0.5), depth_share=1.0))
    server.load_state(linear_branches())
    plan = server.plan_round(5, [(n, capacity) for n in range(participants)])
    coverage = plan.coverage(server.group_sizes)["blocks"]
    assert (coverage == coverage[0]).all()  # windows evenly spaced: each block in the same share of sub-models
    x = torch.randn(16, 4)
    with torch.no_grad():
        outputs = [build_submodel(Residual, server.download(pp), stacks=server.slicer.stacks)(x) for pp in plan.participants.values()]
        evaluated = server.global_model()(x)
        unscaled = build_submodel(Residual, server.state, stacks=server.slicer.stacks)(x)
    torch.testing.assert_close(evaluated, torch.stack(outputs).mean(0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(unscaled, evaluated, atol=1e-3)  # θ as it is is not that mean


def test_shallow_is_the_first_blocks_trained_by_all():
    server = SubmodelServer(Residual, SPLIT, make_planner("shallow", small_capacity=0.25))
    assert dict(server.group_sizes) == {"blocks": 2} and len(server.global_model().blocks) == 2
    plan = server.plan_round(1, [(0, 0.25), (1, 1.0)])
    for pp in plan.participants.values():
        assert pp.indices("blocks").tolist() == [0, 1]
        assert sorted(server.download(pp)) == sorted(server.state)


def test_width_planners_hold_every_block():
    for name in ("msfusion", "fedrolex", "heterofl", "fd", "small"):
        fam = get_family("llama", num_classes=50, width=64, layers=4)
        server = SubmodelServer(fam.build, fam.split_map, make_planner(name))
        plan = server.plan_round(2, [(0, 0.25), (1, 0.5)])
        assert all(len(pp.indices("model.layers")) == 4 for pp in plan.participants.values()), name
        assert len(server.global_model().model.layers) == 4


def test_combined_windows_hold_a_window_of_blocks_each_at_reduced_width():
    fam = get_family("llama", num_classes=50, width=64, layers=4)  # 1 head of 64 per layer, 256 FFN units
    planner = make_planner("msfusion-combined")
    assert planner.depth_share == MSfusionPlanner(depth_share=0.5).depth_share == 0.5 and planner.name == "msfusion-combined"
    server = SubmodelServer(fam.build, fam.split_map, planner, post_build=fam.post_build)
    plan = server.plan_round(1, [(0, 0.25), (1, 0.25)])
    pp = plan.participants[0]
    blocks = pp.indices("model.layers")
    assert len(blocks) == 2  # sqrt(1/4) of 4 blocks
    down = server.download(pp)
    assert down["model.layers.1.mlp.down_proj.weight"].shape == (64, 128)  # ... each at half its FFN
    assert "model.layers.2.mlp.down_proj.weight" not in down
    sub = build_submodel(fam.build, down, fam.post_build, server.slicer.stacks)
    assert len(sub.model.layers) == 2 and sub(torch.randint(0, 50, (2, 8))).logits.shape == (2, 8, 50)


def test_llama_depth_round_trains_with_the_contrastive_term_across_shifting_windows():
    """Two rounds through the real Participant: its sub-model is the window's layers, the reply is
    under the sub-model's keys, and the previous round's layers map onto the new window by block."""
    fam = get_family("llama", num_classes=13, width=64, layers=4)
    torch.manual_seed(0)
    server = SubmodelServer(fam.build, fam.split_map, make_planner("msfusion-depth"), post_build=fam.post_build)
    part = Participant(fam.build, fam.split_map, fam.representation_layer, post_build=fam.post_build)
    tokens = torch.arange(300) % 13
    data = TensorData(tokens[:288].reshape(-1, 9)[:, :8], tokens[:288].reshape(-1, 9)[:, 1:])
    cfg = TrainConfig(token_ids, batch_size=8, lr=3e-3, optimizer="adamw", mu=1.0, regularised_fraction=1.0)
    previous = {}
    for t in (1, 2):
        plan = server.plan_round(t, [(1, 0.5), (2, 0.5)])
        replies = []
        for nid in (1, 2):
            update, previous[nid] = part.train(plan.participants[nid], server.download(plan.participants[nid]), data, cfg, previous=previous.get(nid), round_index=t - 1)
            assert set(update.state) == set(server.reply_spec(plan.participants[nid]))
            assert update.result.flops > 0
            replies.append(Reply(nid, update.state, update.result.num_examples))
        server.aggregate(plan, replies)
    assert len(server.global_model().model.layers) == 4


def test_map_previous_matches_blocks_by_their_global_index():
    slicer = Slicer(SPLIT)
    prev_units, units = {"blocks": np.array([2, 3])}, {"blocks": np.array([3, 4])}
    prev = {f"blocks.{j}.out.weight": torch.full((D, D), float(i)) for j, i in enumerate([2, 3])}
    received = {f"blocks.{j}.out.weight": torch.full((D, D), -1.0) for j in range(2)}
    mapped = map_previous(slicer, prev, prev_units, received, units)
    assert float(mapped["blocks.0.out.weight"][0, 0]) == 3.0  # block 3: the participant's own previous values
    assert float(mapped["blocks.1.out.weight"][0, 0]) == -1.0  # block 4: new to it, as received


def test_a_block_declaration_that_does_not_fit_is_refused():
    class Uneven(Residual):
        def __init__(self) -> None:
            super().__init__()
            self.blocks[3].out = nn.Linear(D, D, bias=True)

    with pytest.raises(ValueError, match="block 3 of 'blocks' differs"):
        group_sizes(model_shapes(Uneven()), SPLIT)
    with pytest.raises(ValueError, match="branch outputs"):
        group_sizes(model_shapes(Residual()), {"blocks": Blocks(("nothing.weight",))})
    with pytest.raises(ValueError, match="holds no parameters"):
        group_sizes(model_shapes(Residual()), {"stack": Blocks(("out.weight",))})


def test_residual_cnn_windows_hold_k_blocks_of_each_stage():
    fam = get_family("rescnn", num_classes=10, width=8, layers=4)
    server = SubmodelServer(fam.build, fam.split_map, make_planner("msfusion-depth"))
    assert {g: server.group_sizes[g] for g in server.group_sizes.depth} == {"stage1": 4, "stage2": 4}
    plan = server.plan_round(3, [(n, 0.5) for n in range(4)])
    for pp in plan.participants.values():
        sub = build_submodel(fam.build, server.download(pp), stacks=server.slicer.stacks)
        assert len(sub.stage1) == 2 and len(sub.stage2) == 2 and sub.stage1[0].conv1.weight.shape == (8, 8, 3, 3)
        assert sub(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_depth_windows_run_through_the_app_at_shallows_cost(tmp_path):
    """The real Strategy and ClientApp over WikiText-2: plans, sub-models, replies, the evaluated
    model and its checkpoint. A window of 1 of 4 layers costs a participant what the 1-layer
    shallow model costs: the same bytes and FLOPs."""
    import json
    from pathlib import Path

    from msfusion.local_grid import run_local

    data = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext2"
    config = {
        "model": "llama", "model-width": 64, "model-layers": 4, "dataset": "wikitext2", "data-path": str(data),
        "partitioner": "iid", "seq-len": 16, "optimizer": "adamw", "lr": 0.002, "batch-size": 8, "local-examples": 16,
        "num-server-rounds": 2, "split-ratio-tiers": "0.25", "central-eval-examples": 32, "contrastive-mu": 0.0,
        "output-dir": str(tmp_path), "seed": 1,
    }
    rows = {}
    for planner in ("msfusion-depth", "shallow"):
        run_local(config | {"planner": planner, "run-name": planner}, 4, num_threads=1)
        rows[planner] = [json.loads(line) for line in open(tmp_path / planner / "metrics.jsonl")]
        last = rows[planner][-1]
        assert [r["round"] for r in rows[planner]] == [0, 1, 2] and last["accepted"] == 4 and last["failed"] == 0
        assert last["central-loss"] < rows[planner][0]["central-loss"]
    depth, shallow = rows["msfusion-depth"][-1], rows["shallow"][-1]
    assert depth["bytes-down-per-participant"] == shallow["bytes-down-per-participant"] < depth["full-model-bytes"]
    assert depth["flops-per-participant"] == pytest.approx(shallow["flops-per-participant"], rel=1e-9)


def test_at_full_capacity_depth_windows_are_fedavg_of_the_full_model():
    """r = 1: every window is every block, every block is averaged over everyone, the expectation
    rule scales by 1: msfusion-depth trains exactly what `full` trains."""
    gen = torch.Generator().manual_seed(0)
    data = TensorData(torch.randn(64, 4, generator=gen), torch.randint(0, 3, (64,), generator=gen))
    cfg = TrainConfig(batch_size=16, lr=0.05, mu=0.0)
    thetas = {}
    for name in ("full", "msfusion-depth"):
        torch.manual_seed(0)
        server = SubmodelServer(Residual, SPLIT, make_planner(name))
        part = Participant(Residual, SPLIT, "head")
        for t in (1, 2):
            plan = server.plan_round(t, [(n, 1.0) for n in range(3)])
            replies = []
            for n, pp in plan.participants.items():
                update, _ = part.train(pp, server.download(pp), data, cfg, seed=n, round_index=t - 1)
                replies.append(Reply(n, update.state, update.result.num_examples))
            server.aggregate(plan, replies)
        thetas[name] = server.evaluated_state()
    for key, value in thetas["full"].items():
        torch.testing.assert_close(thetas["msfusion-depth"][key], value, rtol=0, atol=0)
