"""Probe where PTM works in the miniature world: train one skill's pack under several settings, fold it into
θG at a few ω, and print the scores beside ‖τD‖/‖θpre‖ and cos(τG, τD).

    python -m lora_merge.miniature.probe --skill safety --variant lora:lr=2e-3,rank=4 --variant full:lr=5e-4

It reuses a finished study's world, θpre and θG (runs/miniature by default) and writes packs under
runs/probe/adapters, so it never touches the study's own packs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lora_merge.core.console import quiet_libraries
from lora_merge.core.model_record import MODEL_RECORD
from lora_merge.miniature.config import load_config
from lora_merge.miniature.geometry import base_norm, cosine, dense_delta, norm, pack_delta
from lora_merge.miniature.study import Study
from lora_merge.miniature.world import WorldFiles

NUMERIC = {"lr": float, "rank": int, "alpha": float, "epochs": float, "batch_size": int}


def freeze_embeddings_callback():
    """Freeze the input and output embeddings when training starts (lora_merge.train.run has no option for it).

    The trainer has built its optimiser by then; frozen parameters get no gradient, and AdamW skips them.
    """
    from transformers import TrainerCallback

    class FreezeEmbeddings(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            for name, p in model.named_parameters():
                if "embed_tokens" in name or "lm_head" in name:
                    p.requires_grad_(False)
                    p.grad = None

    return FreezeEmbeddings()


def parse_variant(text: str) -> tuple[str, dict]:
    """'lora:lr=2e-3,rank=4' → ('lora', {'lr': 0.002, 'rank': 4}); target_modules=q_proj+v_proj is a list;
    freeze=embeddings freezes the embeddings (full mode)."""
    mode, _, rest = text.partition(":")
    kw: dict = {}
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        kw[key] = NUMERIC[key](value) if key in NUMERIC else value.split("+") if key == "target_modules" else value
    return mode, kw


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--study", default="runs/miniature", help="a finished study's output folder")
    ap.add_argument("--skill", default="safety")
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--omega", default="0.2,0.4,1.0")
    ap.add_argument("--out", default="runs/probe")
    ap.add_argument("--general-lr", type=float, default=None,
                    help="tune a fresh θG from the same θpre at this lr instead of reusing the study's")
    ap.add_argument("--general-epochs", type=float, default=1.0)
    args = ap.parse_args(argv)
    quiet_libraries(loading_bars=False, library_warnings=False)
    cfg = load_config(Path(args.config), overrides={"out": args.out, "adapters_dir": f"{args.out}/adapters"})
    study_dir = Path(args.study)
    general = study_dir / "general"
    # θG's own record names the base it was tuned from, so a study that is still running can be probed.
    base = Path(json.loads((general / MODEL_RECORD).read_text())["lineage"]["start_model"])
    s = Study(cfg)
    s.files, s.base, s.general = WorldFiles(study_dir / "world"), base, general
    if args.general_lr is not None:
        cfg.general.lr, cfg.general.epochs = args.general_lr, args.general_epochs
        s.general = s.train("general", strategy="general", mode="full", data=s.files.train("general"),
                            out=Path(args.out) / "general")
        print(f"θG (lr {args.general_lr:g}, {args.general_epochs:g} epochs): "
              + ", ".join(f"{g} {v:.0f}" for g, v in s.evaluate(s.general, ["general", args.skill]).items()))
    theta, tau_g = base_norm(s.base), dense_delta(s.general, s.base)
    print(f"‖τG‖/‖θpre‖ {norm(tau_g) / theta:.3f}")
    groups = ["general", args.skill] + (["lookalike"] if args.skill == "safety" else [])
    cfg.merge.grid = [float(x) for x in args.omega.split(",")]
    for i, variant in enumerate(args.variant):
        mode, kw = parse_variant(variant)
        name = f"{args.skill}-probe{i}"
        callbacks = [freeze_embeddings_callback()] if kw.pop("freeze", None) == "embeddings" else []
        s.train(name, callbacks, strategy="ptm", mode=mode, data=s.files.train(args.skill), **kw)
        delta = pack_delta(s.adapters / name, s.general, s.base)
        res = s.sweep(args.skill, name, groups)
        pts = "; ".join(f"{r.point.label}: " + ", ".join(f"{g} {v:.0f}" for g, v in r.report.group_scores().items())
                        for r in res.results)
        print(f"{variant:<40} ‖τD‖/‖θpre‖ {norm(delta) / theta:.3f}  cos(τG, τD) {cosine(delta, tau_g):+.3f}  "
              f"steps {s.costs[name]['steps']}  | {pts}", flush=True)


if __name__ == "__main__":
    main()
