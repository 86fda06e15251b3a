"""Meta-step speed and peak memory: lightman against a naive loop, higher and torchopt.

    .venv/bin/python benchmarks/meta_step.py --quick   # 32 px, hidden 32, meta-batch 2 (minutes)
    .venv/bin/python benchmarks/meta_step.py --meta-batch 1 --mem-limit-gb 20   # 64 px (long)
    .venv/bin/python benchmarks/meta_step.py           # the issue's setting: 64 px, meta-batch 8
    .venv/bin/python benchmarks/meta_step.py --smoke   # tiny sizes, no peers: does it run

Every variant but naive loops over the tasks and frees each task's graph before the next,
so its time grows linearly with the meta-batch and its peak memory does not grow at all;
--meta-batch 1 measures the per-task cost in an eighth of the time (naive's one graph
over all tasks is then a one-task graph too).

Every variant computes the same thing from the same weights and the same seeded clips:
the sum over the meta-batch of LightmanNet's second-order outer gradient (inner:
λ1 CE + λ2 MMD on the support and macro clips, inner_steps SGD steps at α; outer: CE
on the query clips; paper Eq. 4):

- lightman-fast / -low: `Learner.meta_grads` with LearnerConfig.memory = fast | low;
- lightman-fast-torchlayers: the same, on the model built from PyTorch's own layers
  (`use_torch_layers`), which separates what the learner does from what Lightman's
  second-order kernels do (batchnorm.py, maxpool.py, input_conv.py);
- naive: one graph over the whole meta-batch (torch.autograd.grad with create_graph=True
  in the inner loop), one backward of the summed query losses at the end;
- higher 0.2.1: `higher.innerloop_ctx(model, SGD, copy_initial_weights=False)`,
  `diffopt.step(loss)`, the query loss `.backward()` per task (its maml-omniglot example);
- torchopt 0.7.3: `torchopt.MetaSGD(model)`, `step(loss)`, the query loss `.backward()`
  per task, then `recover_state_dict` (its MAML example; the example backpropagates once
  over the stacked losses of all tasks instead, which is the naive row's memory);
- the peers (higher, torchopt, naive) run the model as their users build it, from
  PyTorch's own layers (conv -> F.batch_norm -> ReLU -> F.max_pool2d): Lightman's kernels
  are part of what is measured, not something a peer library brings;
- floor: a plain first-order forward+backward of the same clips, task by task (the
  inner loss on support + macro clips, the query CE at θ): one supervised step on them.
learn2learn 0.2.0 is not measured: it ships as a source archive only, and installing
it would replace the CPU torch pin (its torchvision dependency pulls another torch)
and downgrade numpy.

Method. Each measurement runs in a fresh subprocess: it builds the model and the clips,
runs the variant once on one task (warm-up, untimed), then times one whole meta-step:
wall-clock seconds and CPU seconds (user + system, all threads). --rounds repeats the
sweep over the variants (interleaved, so a change of load hits them alike) and keeps
each variant's best times and its largest peak. The ratios are taken on CPU time: other
processes on a shared machine disturb it less than the wall clock, and with --threads 1
not at all through spinning OpenMP threads (on an idle machine the two ratios agree).
Peak memory ("peak MB") is the process's peak resident set (ru_maxrss) minus its
resident set before the warm-up: what the meta-step made the OS hand over, allocator
slack included. "graph MB" is the allocator-free part of it: the largest total of
tensors that autograd graphs held at once during the timed meta-step
(saved_tensors_hooks, `lightman.models.graph_memory.SavedBytes`). Each child is capped
with RLIMIT_DATA at
--mem-limit-gb and reports "out of memory" past it, instead of pushing a shared machine
into the OOM killer. Gradients: each variant's meta-gradient against lightman-fast's
(lightman-low's where fast ran out of memory), the global relative L2 error
||g - g_ref|| / ||g_ref|| over all parameters, in float32.
Numbers depend on the machine and on what else runs on it: the load average is printed.

What made the difference (torch.profiler, 5-way 5-shot, 1 step, 64 px, one task): 42% of
the CPU time was PyTorch's double backward of batch norm, ~40 broadcast ops per layer;
its closed form (batchnorm.py) cut the meta-step to 0.57x. The memory is the autograd
graphs' saved maps, and three of them are not needed for the second derivative: the
max-pool's input (only its argmax is: int32 indices, maxpool.py), the full gradient at
the norm's output when a max-pool follows (it is the pooled gradient scattered: the
norm and the pool are one node), and the first convolution's incoming gradient (its
input is data, input_conv.py). Together: about half the peak of the same learner on
PyTorch's layers, at the same gradients.

Tried for lightman on CPU with the same exact gradients, measured, and not kept:
- channels_last conv weights (oneDNN's preferred layout, which the convolutions then
  propagate): CPU time within noise (±5%) at 64 px.
- torch.func.vmap over the tasks (grad of grad): 1.5x the time and 3.5x the memory of
  the per-task loop at 32 px, T=2, since it holds every task's graph at once.
- forward-over-reverse Hessian-vector products (torch.func.jvp of grad) for
  memory=low: slower, and 1.7x the memory of rebuilding the step's reverse-mode graph.
- reverse-over-forward: PyTorch 2.13's forward-mode formula of logsumexp (and so
  cross_entropy) writes a saved tensor in place, so it cannot be differentiated again.
- one backbone pass over the support and macro clips together: it changes the
  statistics in bn_mode=task (each batch is normalised with its own), the default.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightman.models import backbones, norm
from lightman.models.graph_memory import SavedBytes
from lightman.models.learners import LearnerConfig, build_learner, learner_config
from lightman.models.learners.functional import forward
from lightman.models.learners.params import Params, trainable
from lightman.models.mmd import mmd2
from lightman.models.net import PRESETS, build_model
from lightman.platform.runtime import setup

GRAD_TOLERANCE = 1e-4  # float32 relative L2 error above which the table flags a gradient


@dataclass(frozen=True)
class Setting:
    """One benchmark setting: episodes, model size, inner steps."""

    shots: int
    steps: int
    image_size: int = 64
    hidden: int = 64
    meta_batch: int = 8
    ways: int = 5
    query: int = 5
    aux_shots: int = 5
    frames: int = 8

    @property
    def label(self) -> str:
        return (
            f"{self.ways}-way {self.shots}-shot, {self.steps} step{'s' if self.steps > 1 else ''}, "
            f"{self.frames}x{self.image_size}px, T={self.meta_batch}"
        )


@dataclass(frozen=True)
class Task:
    """One episode (satisfies learners.base.TaskLike)."""

    support_x: Tensor  # (N*K, M, C, H, W)
    support_y: Tensor  # (N*K,)
    query_x: Tensor  # (N*Q, M, C, H, W)
    query_y: Tensor  # (N*Q,)
    aux_x: Tensor  # (N*aux_shots, M, C, H, W) macro clips
    aux_y: Tensor  # (N*aux_shots,) -1: every macro clip unpaired (L_aux is marginal here)
    classes: tuple[int, ...]  # the pool's class of way j


def make_tasks(s: Setting, seed: int = 0) -> list[Task]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(s.ways)

    def clips(n: int) -> Tensor:
        return torch.rand((n, s.frames, 3, s.image_size, s.image_size), generator=g)

    return [
        Task(
            clips(s.ways * s.shots),
            labels.repeat(s.shots),
            clips(s.ways * s.query),
            labels.repeat(s.query),
            clips(s.ways * s.aux_shots),
            torch.full((s.ways * s.aux_shots,), -1),
            tuple(range(s.ways)),
        )
        for _ in range(s.meta_batch)
    ]


def make_model(s: Setting, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = replace(
        PRESETS["conv4-64"], image_size=s.image_size, hidden=s.hidden, frames=s.frames, ways=s.ways
    )
    return build_model(cfg).train()


# ---- the variants: (model, tasks, cfg) -> Σ_i outer gradient, by parameter name --------------


def inner_loss(f: Callable[..., object], task: Task, cfg: LearnerConfig) -> Tensor:
    """λ1 CE + λ2 MMD² on a support set, with f(x, head=...) a model or a patched copy."""
    logits, micro = f(task.support_x, head="both")
    macro = f(task.aux_x, head="aux")
    return cfg.lambda_pri * F.cross_entropy(logits, task.support_y) + cfg.lambda_aux * mmd2(
        micro, macro, cfg.sigma
    )


def use_torch_layers() -> None:
    """Build the model from PyTorch's own layers, as a peer library's user writes Conv4:
    conv -> F.batch_norm -> ReLU -> F.max_pool2d, with PyTorch's autograd formulas for
    every second derivative, instead of Lightman's kernels (batchnorm.py, maxpool.py,
    input_conv.py). Same values and gradients; called in the variant's own process."""

    def batch_norm(x, weight, bias, running_mean, running_var, momentum, eps):
        return F.batch_norm(
            x, running_mean, running_var, weight, bias, training=True, momentum=momentum, eps=eps
        )

    def block(self, x, update_stats=False):
        x = F.relu(self.norm(backbones.per_frame(self.conv, x), update_stats))
        return backbones.per_frame(lambda f: F.max_pool2d(f, 2), x) if self.pool else x

    norm.batch_norm_train = batch_norm
    backbones.ConvBlock.forward = block


def grads_by_name(model: nn.Module) -> Params:
    return {n: p.grad for n, p in model.named_parameters()}


def lightman(memory: str):
    def run(model: nn.Module, tasks: Sequence[Task], cfg: LearnerConfig) -> Params:
        learner = build_learner(replace(cfg, memory=memory))
        return learner.meta_grads(
            model, dict(model.named_parameters()), dict(model.named_buffers()), tasks
        )[0]

    return run


def naive(model: nn.Module, tasks: Sequence[Task], cfg: LearnerConfig) -> Params:
    """One autograd graph over every task, differentiated once at the end."""
    theta = trainable(dict(model.named_parameters()))
    total = 0.0
    for t in tasks:
        p = theta
        for _ in range(cfg.inner_steps):
            loss = inner_loss(partial(forward, model, p, {}), t, cfg)
            grads = torch.autograd.grad(loss, list(p.values()), create_graph=True)
            p = {n: w - cfg.inner_lr * g for (n, w), g in zip(p.items(), grads)}
        total = total + F.cross_entropy(forward(model, p, {}, t.query_x, "pri"), t.query_y)
    return dict(zip(theta, torch.autograd.grad(total, list(theta.values()))))


def with_higher(model: nn.Module, tasks: Sequence[Task], cfg: LearnerConfig) -> Params:
    import higher

    model.zero_grad(set_to_none=True)
    inner_opt = torch.optim.SGD(model.parameters(), lr=cfg.inner_lr)
    for t in tasks:
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
            for _ in range(cfg.inner_steps):
                diffopt.step(inner_loss(fnet, t, cfg))
            F.cross_entropy(fnet(t.query_x, head="pri"), t.query_y).backward()
    return grads_by_name(model)


def with_torchopt(model: nn.Module, tasks: Sequence[Task], cfg: LearnerConfig) -> Params:
    import torchopt

    model.zero_grad(set_to_none=True)
    named = dict(model.named_parameters())  # the leaves; MetaSGD swaps non-leaves into the model
    inner_opt = torchopt.MetaSGD(model, lr=cfg.inner_lr)
    net_state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
    opt_state = torchopt.extract_state_dict(inner_opt, by="reference")
    for t in tasks:
        for _ in range(cfg.inner_steps):
            inner_opt.step(inner_loss(model, t, cfg))
        F.cross_entropy(model(t.query_x, head="pri"), t.query_y).backward()
        torchopt.recover_state_dict(model, net_state)
        torchopt.recover_state_dict(inner_opt, opt_state)
    return {n: p.grad for n, p in named.items()}


def floor(model: nn.Module, tasks: Sequence[Task], cfg: LearnerConfig) -> Params:
    """First-order forward+backward of the same clips at θ, task by task: no meta-learning."""
    model.zero_grad(set_to_none=True)
    for t in tasks:
        inner_loss(model, t, cfg).backward()
        F.cross_entropy(model(t.query_x, head="pri"), t.query_y).backward()
    return grads_by_name(model)


VARIANTS: dict[str, Callable[[nn.Module, Sequence[Task], LearnerConfig], Params]] = {
    "lightman-fast": lightman("fast"),
    "lightman-low": lightman("low"),
    "lightman-fast-torchlayers": lightman("fast"),
    "higher": with_higher,
    "torchopt": with_torchopt,
    "naive": naive,
    "floor": floor,
}
REFERENCES = ("lightman-fast", "lightman-low")  # the first that ran is the reference
TORCH_LAYERS = (
    "lightman-fast-torchlayers",
    "higher",
    "torchopt",
    "naive",
)  # run with use_torch_layers()


# ---- one measurement in a fresh process --------------------------------------------------------


def rss_mb() -> float:
    """Resident set size of this process now, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(setting: Setting, variant: str, grads_path: str) -> dict:
    """Warm-up on one task, then one timed meta-step; saves its meta-gradient."""
    run = VARIANTS[variant]
    model, tasks = make_model(setting), make_tasks(setting)
    cfg = learner_config(inner_steps=setting.steps)
    gc.collect()
    base = rss_mb()
    saved = SavedBytes()
    try:
        run(model, tasks[:1], cfg)
        start, start_cpu = time.perf_counter(), cpu_seconds()
        # The hooks cost a Python call per saved tensor: well under 1% of a meta-step here.
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            grads = run(model, tasks, cfg)
        wall, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    except (RuntimeError, MemoryError) as e:
        if "can't allocate memory" not in str(e) and not isinstance(e, MemoryError):
            raise
        return {"oom": True, "peak_mb": peak_rss_mb() - base}
    torch.save({n: g.detach().contiguous() for n, g in grads.items()}, grads_path)
    return {
        "oom": False,
        "wall": wall,
        "cpu": cpu,
        "peak_mb": peak_rss_mb() - base,
        "graph_mb": saved.peak / 2**20,
    }


def worker(spec: dict) -> None:
    limit = int(spec["mem_limit_gb"] * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    if spec["variant"] in TORCH_LAYERS:
        use_torch_layers()
    result = measure(Setting(**spec["setting"]), spec["variant"], spec["grads_path"])
    print("RESULT " + json.dumps(result), flush=True)


def spawn(
    setting: Setting, variant: str, mem_limit_gb: float, threads: int, grads_path: str
) -> dict:
    """`measure` in a fresh Python process (its own peak RSS, its own memory cap)."""
    spec = {
        "setting": asdict(setting),
        "variant": variant,
        "mem_limit_gb": mem_limit_gb,
        "threads": threads,
        "grads_path": grads_path,
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{variant} on {setting.label} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, for the header."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def relative_error(got: Params, want: Params) -> float:
    """||got − want|| / ||want|| over all parameters together."""
    if set(got) != set(want):
        raise ValueError(f"parameter names differ: {sorted(set(got) ^ set(want))}")
    num = sum(float(((got[n].double() - want[n].double()) ** 2).sum()) for n in want)
    den = sum(float((want[n].double() ** 2).sum()) for n in want)
    return (num / den) ** 0.5


# ---- the tables ---------------------------------------------------------------------------------

PEERS = ("higher", "torchopt", "naive")


def reference(block: dict[str, dict]) -> str | None:
    """The lightman row the others are compared with: fast, or low where fast ran out of memory."""
    return next((n for n in REFERENCES if n in block and not block[n]["oom"]), None)


def ratio(value: float | None, ref: float | None) -> str:
    return f"{value / ref:.2f}" if value is not None and ref else "–"


def table(rows: list[dict], limit_gb: float) -> list[str]:
    """One row per (setting, variant); ratios over the setting's lightman reference and floor."""
    header = (
        "| setting | variant | wall s | CPU s | × lightman | × floor | peak MB | × lightman "
        "| graph MB | grad rel. err |"
    )
    out = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for label in dict.fromkeys(r["setting"] for r in rows):
        block = {r["variant"]: r for r in rows if r["setting"] == label}
        ref, base = block.get(reference(block) or "", {}), block.get("floor", {})
        for name, r in block.items():
            if r["oom"]:
                out.append(
                    f"| {label} | {name} | – | – | – | – "
                    f"| > {limit_gb * 1024:.0f} (out of memory) | – | – | – |"
                )
                continue
            err = r.get("grad_err")
            err_s = (
                "–"
                if err is None
                else f"{err:.1e}" + ("" if err <= GRAD_TOLERANCE else " (differs)")
            )
            out.append(
                f"| {label} | {name} | {r['wall']:.2f} | {r['cpu']:.2f} "
                f"| {ratio(r['cpu'], ref.get('cpu'))} "
                f"| {ratio(r['cpu'], base.get('cpu'))} | {r['peak_mb']:.0f} "
                f"| {ratio(r['peak_mb'], ref.get('peak_mb'))} | {r['graph_mb']:.0f} | {err_s} |"
            )
    return out


def summary(rows: list[dict]) -> list[str]:
    """Per setting: each lightman mode against the best peer that ran (CPU time, peak memory)."""
    out = [
        "| setting | mode | CPU time ÷ fastest peer | peak ÷ smallest peer peak "
        "| CPU time ÷ floor |",
        "|---|---|---|---|---|",
    ]
    for label in dict.fromkeys(r["setting"] for r in rows):
        block = {r["variant"]: r for r in rows if r["setting"] == label and not r["oom"]}
        peers = [block[n] for n in PEERS if n in block]
        fastest = min((p["cpu"] for p in peers), default=None)
        smallest = min((p["peak_mb"] for p in peers), default=None)
        for name in (n for n in (*REFERENCES, "lightman-fast-torchlayers") if n in block):
            r = block[name]
            out.append(
                f"| {label} | {name} | {ratio(r['cpu'], fastest)} "
                f"| {ratio(r['peak_mb'], smallest)} "
                f"| {ratio(r['cpu'], block.get('floor', {}).get('cpu'))} |"
            )
    return out


def best_of(label: str, runs: dict[str, list[dict]], tmp: str) -> list[dict]:
    """One row per variant: the fastest wall and CPU times and the largest peak over its rounds,
    and its gradient's error against the lightman reference's (the last round's gradients)."""
    rows, ref = [], None
    for name, results in runs.items():
        if results[-1]["oom"]:
            rows.append({"setting": label, "variant": name, "oom": True})
            continue
        row = {
            "setting": label,
            "variant": name,
            "oom": False,
            "wall": min(r["wall"] for r in results),
            "cpu": min(r["cpu"] for r in results),
            "peak_mb": max(r["peak_mb"] for r in results),
            "graph_mb": max(r["graph_mb"] for r in results),
            "rounds": results,
        }
        if name != "floor":
            grads = torch.load(os.path.join(tmp, f"{name}.pt"))
            if ref is None:
                ref = grads  # the first lightman mode that ran (variants are ordered so)
            else:
                row["grad_err"] = relative_error(grads, ref)
        rows.append(row)
    return rows


# --smoke: the smallest episodes and model that run every code path, in seconds; only the
# variants without optional packages (higher and torchopt need theirs).
SMOKE = {"image_size": 16, "hidden": 8, "meta_batch": 1, "ways": 2, "query": 1, "aux_shots": 1}
SMOKE_VARIANTS = ("lightman-fast", "lightman-low", "naive", "floor")


def settings_for(args: argparse.Namespace) -> list[Setting]:
    if args.smoke:
        return [Setting(shots=1, steps=1, frames=6, **SMOKE)]
    size = {"image_size": 32, "hidden": 32, "meta_batch": 2} if args.quick else {}
    if args.meta_batch:
        size["meta_batch"] = args.meta_batch
    chosen = []
    for item in args.settings.split(","):
        shots, steps = (int(v) for v in item.lower().split("x"))
        chosen.append(Setting(shots=shots, steps=steps, **size))
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="32 px, hidden 32, meta-batch 2 (a fast check)"
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="2-way 1-shot, 1 step, 6x16 px, hidden 8, one task, one round, variants "
        f"{','.join(SMOKE_VARIANTS)}: that the benchmark runs, in seconds (times mean nothing)",
    )
    ap.add_argument("--settings", default="1x1,5x1,1x5,5x5", help="SHOTSxSTEPS list, e.g. 5x1,5x5")
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}"
    )
    ap.add_argument(
        "--meta-batch", type=int, default=0, help="tasks per meta-step (default 8; --quick 2)"
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="timed meta-steps per variant, one per round over all variants (default 1; --quick 3)",
    )
    ap.add_argument(
        "--mem-limit-gb", type=float, default=10.0, help="per-variant memory cap (RLIMIT_DATA)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per variant (default: torch's, one per core); 1 keeps CPU time exact "
        "on a busy machine, where waiting OpenMP threads spin",
    )
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    variants = list(SMOKE_VARIANTS) if args.smoke else args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not set(REFERENCES) & set(variants):
        ap.error(
            f"--variants must name a lightman mode {list(REFERENCES)} and only {list(VARIANTS)}; "
            f"unknown: {unknown}"
        )
    # lightman first: the others' gradients are compared with its.
    variants = [v for v in REFERENCES if v in variants] + [
        v for v in variants if v not in REFERENCES
    ]
    rounds = 1 if args.smoke else args.rounds or (3 if args.quick else 1)
    load_before = os.getloadavg()
    threads = args.threads or torch.get_num_threads()
    print(
        f"torch {torch.__version__}, {threads} thread(s) per variant, "
        f"{os.cpu_count()} cores of {cpu_name()}, "
        f"load average {load_before[0]:.2f}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in settings_for(args):
            runs: dict[str, list[dict]] = {name: [] for name in variants}
            for _ in range(rounds):  # rounds interleave the variants, so load drifts hit them alike
                for name in variants:
                    if runs[name] and runs[name][-1]["oom"]:
                        continue
                    r = spawn(
                        setting,
                        name,
                        args.mem_limit_gb,
                        args.threads,
                        os.path.join(tmp, f"{name}.pt"),
                    )
                    runs[name].append(r)
                    shown = (
                        "out of memory" if r["oom"] else f"{r['wall']:.2f} s, {r['cpu']:.2f} CPU s"
                    )
                    print(f"  {setting.label}: {name}: {shown}, {r['peak_mb']:.0f} MB", flush=True)
            rows += best_of(setting.label, runs, tmp)
    print(
        f"\nload average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
        f"best of {rounds} meta-step(s) per variant, each in a fresh process; ratios on CPU "
        "time; × lightman: over lightman-fast (lightman-low where fast ran out of memory); "
        "× floor: over the first-order pass\n"
    )
    print("\n".join(table(rows, args.mem_limit_gb)))
    print()
    print("\n".join(summary(rows)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    setup()  # an entry point: process-wide settings before the first kernel (runtime.py)
    main()
