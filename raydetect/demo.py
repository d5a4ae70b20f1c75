"""`raydetect demo` (what `make demo` runs): every stage end to end on the embedded defaults.

offline benchmark (built once) -> verify -> train a small model (Ray Train) -> batch-score the test split
(Ray Data) -> evaluation report (HTML) -> Grad-CAM explanations of two test images -> DIRE on a sample
(`demo.dire`: its UNet, maps of some training images, the statistics classifier's CV) -> registry: promote
the model through the gates -> a Serve smoke call on the trained model. Each stage prints where its output
went; a re-run reuses the benchmark and retrains/re-scores quickly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raydetect.config import Settings


@dataclass
class DemoOutputs:
    workdir: Path
    outputs: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    headline: dict[str, Any] = field(default_factory=dict)


def _stage(name: str, outputs: DemoOutputs, work: Callable[[], Any], log: Callable[[str], None]) -> Any:
    log(f"\n=== {name} ===")
    start = time.perf_counter()
    result = work()
    outputs.timings_s[name] = round(time.perf_counter() - start, 1)
    log(f"--- {name} done in {outputs.timings_s[name]:.1f} s")
    return result


def run_demo(
    settings: Settings,
    n_pairs: int | None = None,
    serve_check: bool = True,
    log: Callable[[str], None] = print,
) -> DemoOutputs:
    """Run every stage under `settings.workdir`; returns where each output went and the headline metrics."""
    from raydetect.cluster import connect
    from raydetect.data.benchmark.build import build_from_settings
    from raydetect.data.verify import summary_text, verify, write_report
    from raydetect.evaluate.report import write_report as write_evaluation
    from raydetect.score.pipeline import score_run
    from raydetect.train.cv import format_cv_table, format_generalisation, train_detector
    from raydetect.train.trainer import unique_name

    settings = settings.for_demo()  # the demo's recipe (`demo.train`)
    workdir = settings.workdir_path
    workdir.mkdir(parents=True, exist_ok=True)
    out = DemoOutputs(workdir)
    bench_root = str(workdir / "benchmark")
    model_dir = str(workdir / "models" / "demo")
    predictions = str(workdir / "predictions")
    # Every demo trains a new model: its own version, and its own prediction run. (Scoring resumes rows of
    # the same run, path, bytes, model name and version; a fixed version would reuse the last model's rows.)
    version = unique_name("demo")
    run_id = version

    connect(settings=settings)  # workers' progress bars and epoch reports reach the terminal; Serve's environment

    overrides = {"n_pairs": n_pairs} if n_pairs else {}
    bench = _stage("1/6 offline benchmark", out, lambda: build_from_settings(bench_root, settings, **overrides), log)
    out.outputs["benchmark"] = bench_root
    out.outputs["benchmark preview"] = str(Path(bench_root) / "benchmark_preview.png")
    log(f"benchmark: {bench_root} ({'built' if bench.built else 'reused'} in {bench.seconds:.0f} s)")

    report = _stage("2/6 verify (quality + shortcut audit)", out, lambda: verify(bench_root, "train", settings), log)
    verify_json = str(workdir / "reports" / "verify.json")
    write_report(report, verify_json, settings)
    log(summary_text(report))
    out.outputs["verify report"] = verify_json
    if not report["ok"]:
        raise SystemExit(f"the benchmark failed verification: {report['blocking']}")

    outcome = _stage(
        f"3/6 train ({settings.train.recipe} {settings.train.backbone})",
        out,
        lambda: train_detector(bench_root, settings, cv=1, output=model_dir, name=version),
        log,
    )
    log(format_cv_table(outcome.table, f"{settings.train.recipe} {settings.train.backbone}: validation fold"))
    if outcome.generalisation is not None:
        log(format_generalisation(outcome.generalisation))
    out.outputs["model"] = outcome.model_uri or model_dir
    out.outputs["mlflow"] = settings.mlflow_uri()

    manifest = _stage(
        "4/6 batch-score the test split (Ray Data)",
        out,
        lambda: score_run(bench_root, model_dir, predictions, run_id, split="test", settings=settings),
        log,
    )
    log(json.dumps(manifest.get("counts", {}), indent=None))
    out.outputs["predictions"] = f"{predictions}/run={run_id}"

    from raydetect.data.manifest import read_manifest

    html = str(workdir / "reports" / "evaluation.html")

    def evaluation() -> dict[str, Any]:
        from raydetect.evaluate.robustness import model_checks

        labelled = read_manifest(bench_root, "test", settings)
        return write_evaluation(
            out.outputs["predictions"],
            labelled,
            html,
            title="raydetect demo: held-out test split of the offline benchmark",
            context={"model": model_dir, "backbone": settings.train.backbone, "benchmark": bench_root},
            settings=settings.evaluate,
            **model_checks([model_dir], labelled, settings),  # robustness sweep + adversarial table, on samples
        )

    summary = _stage("5/6 evaluation report (+ robustness, adversarial)", out, evaluation, log)
    out.outputs["evaluation report"] = html
    out.headline = {k: summary["overall"][k] for k in ("n", "accuracy", "f1", "auc_roc")}
    calibration = summary["calibration"]
    out.headline.update({k: calibration[k] for k in ("ece_before", "ece") if k in calibration})
    out.headline["review_share"] = summary["decision"]["review_share"]

    explained = str(workdir / "reports" / "explanations")
    _stage("explain: Grad-CAM of two test images", out,
           lambda: explain_examples(settings, read_manifest(bench_root, "test", settings), model_dir, explained, log),
           log)  # fmt: skip
    out.outputs["explanations"] = explained

    if settings.demo.dire is not None:  # `demo.dire: null` switches the stage off
        out.outputs["dire model"] = _stage(
            "DIRE (sample)", out, lambda: dire_sample(settings, bench_root, workdir, log), log
        )

    out.outputs["registry"] = _stage(
        "registry: promote through the gates", out,
        lambda: promote_demo_model(settings, outcome, summary, f"{bench_root} (test)", html, log), log,
    )  # fmt: skip

    if serve_check:

        def serve_once() -> dict[str, Any]:
            from ray import serve

            from raydetect.serve.app import build_app
            from raydetect.serve.local import local_url, port_is_free, smoke_check

            if not port_is_free(settings.serve.host, settings.serve.port):
                log(f"port {settings.serve.port} is busy: skipping the Serve check")
                return {}
            serve.start(http_options={"host": settings.serve.host, "port": settings.serve.port})
            try:
                serve.run(build_app(settings, model_dir), name="raydetect-demo", route_prefix="/")
                url = local_url(settings)
                test_image = read_manifest(bench_root, "test", settings)["path"].iloc[0]
                from raydetect import storage

                answer = smoke_check(url, storage.read_bytes(test_image))
                log(f"POST {url}v1/predict -> {json.dumps({k: answer[k] for k in ('prob_ai', 'decision')})}")
                return answer
            finally:
                serve.shutdown()

        _stage("6/6 Serve smoke call", out, serve_once, log)

    log("\n=== outputs ===")
    for name, where in out.outputs.items():
        log(f"{name:<20} {where}")
    shown = (f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in out.headline.items())
    log("headline: " + "  ".join(shown))
    (workdir / "reports").mkdir(parents=True, exist_ok=True)
    (workdir / "reports" / "demo.json").write_text(
        json.dumps({"outputs": out.outputs, "timings_s": out.timings_s, "headline": out.headline}, indent=2)
    )
    return out


def dire_sample(settings: Settings, bench_root: str, workdir: Path, log: Callable[[str], None]) -> str:
    """The DIRE family on a sample (`demo.dire` over `dire:`): `raydetect dire fit-diffusion` (its UNet on the
    real training images outside the held-out fold) into <workdir>/dire/diffusion, `dire maps --limit
    demo.dire_sample` of the training split (Ray Data) into <workdir>/dire/maps-demo, then `dire
    fit-classifier` (grouped CV table, leave-ddpm-out when the benchmark has `ddpm`) into
    <workdir>/models/dire. Returns the model directory."""
    import shutil

    from raydetect.data.manifest import read_manifest
    from raydetect.dire.fit import fit_diffusion
    from raydetect.dire.maps import dire_maps
    from raydetect.dire.stats import fit_classifier

    diffusion = str(fit_diffusion(bench_root, workdir / "dire" / "diffusion", settings, log=log))
    maps = workdir / "dire" / "maps-demo"
    shutil.rmtree(maps, ignore_errors=True)  # a new UNet each run: its maps are made afresh, not resumed
    dire_maps(bench_root, str(maps), settings, split="train", diffusion=diffusion, limit=settings.demo.dire_sample,
              log=log)  # fmt: skip
    generators = set(read_manifest(bench_root, "train", settings).get("generator", []))
    uri, _ = fit_classifier(str(maps), str(workdir / "models" / "dire"), settings,
                            leave_out="ddpm" if "ddpm" in generators else None, log=log)  # fmt: skip
    log(f"model: {uri}")
    return uri


def explain_examples(settings: Settings, labelled, model_dir: str, out_dir: str, log: Callable[[str], None],
                     per_class: int = 1) -> list:  # fmt: skip
    """Grad-CAM overlays and reasons (`raydetect explain --method gradcam`) of the first `per_class` real and
    AI-generated images of the labelled split, into `out_dir`."""
    from raydetect.explain.files import write_explanations
    from raydetect.models.bundle import load_detector

    picked = labelled[labelled["label"].notna()].groupby("label", sort=True).head(per_class)
    detector = load_detector(model_dir, device=settings.device, precision=settings.precision)
    return write_explanations(detector, picked["path"].tolist(), out_dir, settings, method="gradcam", log=log)


def promote_demo_model(settings: Settings, outcome: Any, summary: dict, data: str, report: str,
                       log: Callable[[str], None]) -> str:
    """Register the demo's model (training did when `registry.auto_register` is on), attach its evaluation,
    promote it through the gates (a refusal is reported, not raised) and print the registry table."""
    from raydetect import registry
    from raydetect.registry_cli import format_table

    version = outcome.extra.get("registry_version") or registry.register(settings, outcome.model_uri)
    registry.attach_evaluation(settings, version, summary, data, report)
    promotion = registry.promote(settings, version)
    for gate in promotion.gates:
        log(gate.line())
    verdict = "promoted" if promotion.passed else "refused: " + ", ".join(g.name for g in promotion.failed)
    log(f"version {version}: {verdict}")
    log(format_table(registry.list_versions(settings)))
    return f"{settings.registry.model_name} version {version} ({verdict})"
