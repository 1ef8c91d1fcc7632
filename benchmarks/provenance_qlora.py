"""Measure, on SmolLM2-135M, what issue 19 decides from: the provenance threshold and LoRA against QLoRA.

Run after the demo's pipeline has made θpre, θG, the science pack and the data (one skill is enough):

    python cli.py demo --config runs/demo-science.yaml          # configs/demo-coding.yaml, skills {science: 40}
    python benchmarks/provenance_qlora.py --config runs/demo-science.yaml

It adds, in the same run folder and with the demo's own settings (lora_merge.study.driver.StudyRun):

- θCFT (θG continued on science) and two fresh initialisations of θpre's config (seeds 1, 2);
- the science skill trained again as QLoRA on the 4-bit θpre (same recipe, ``mode: qlora``);
- the provenance distance of each model from each pack's θpre sketch (the LoRA packs, and a dense pack of
  θCFT − θpre that sketches every weight), with the whole-weight distance beside it;
- ‖θpre − dequant(Q4(θpre))‖ / ‖ΔW‖ per layer for both packs;
- both packs folded into θG at ω = |D|/|G| and 1, and the QLoRA pack with the residual correction
  (θG + ω·τ + dequant(Q4(θpre)) − θpre on the adapted layers), each scored on general and science.

Numbers go to RUN/results/provenance_qlora.json and are quoted in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from lora_merge.demo.data import demo_data
from lora_merge.io.fingerprint import read_config
from lora_merge.io.tensors import WeightSet
from lora_merge.pack.extract import ExtractRequest, extract_pack
from lora_merge.pack.interference import terms_inner
from lora_merge.pack.provenance import base_distance, pack_sketch
from lora_merge.pack.quant_error import quantization_report
from lora_merge.pack.skillpack import load_pack
from lora_merge.pack.task_vector import TargetModel, TaskVector
from lora_merge.study.config import load_study_config
from lora_merge.study.driver import StudyRun


def fresh_init(pre: Path, out: Path, seed: int) -> Path:
    """θpre's config initialised anew: same names and shapes, no shared lineage."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(pre), dtype=torch.float32)
    model.save_pretrained(out)
    return out


def whole_distance(model: WeightSet, pre: WeightSet, names: list[str]) -> tuple[float, float]:
    """(median over ``names`` of ‖θ − θpre‖ / ‖θpre‖, the same ratio pooled), over whole weights: what the
    sketch estimates."""
    per, diff, ref = [], 0.0, 0.0
    for n in names:
        p = pre.get(n).double()
        d2, r2 = float((model.get(n).double() - p).square().sum()), float(p.square().sum())
        per.append(math.sqrt(d2 / r2))
        diff, ref = diff + d2, ref + r2
    return statistics.median(per), math.sqrt(diff / ref)


def distances(packs: dict[str, Path], models: dict[str, Path]) -> dict:
    out = {}
    for label, pack_dir in packs.items():
        pack = load_pack(pack_dir)
        sketch = pack_sketch(pack)
        pre = WeightSet.open(sketch.base)
        rows = {}
        for name, folder in models.items():
            ws = WeightSet.open(folder)
            started = time.perf_counter()
            d = base_distance(sketch, ws, TargetModel.from_weights(ws, read_config(folder)))
            took = time.perf_counter() - started
            whole_median, whole_pooled = whole_distance(ws, pre, list(sketch.values))
            rows[name] = {"sketch": d.distance, "cosine": d.cosine, "cosine_range": [min(d.cosines.values()),
                                                                                      max(d.cosines.values())],
                          "sketch_pooled": d.pooled, "whole": whole_median,
                          "whole_pooled": whole_pooled, "max_tensor": max(d.per_tensor.values()),
                          "min_tensor": min(d.per_tensor.values()), "tensors": d.compared, "seconds": round(took, 3)}
            print(f"{label:>16} vs {name:<8} cosine {d.cosine:.5f} ({min(d.cosines.values()):.3f}–"
                  f"{max(d.cosines.values()):.3f})  sketch {d.distance:.4g} (pooled {d.pooled:.4g})  whole "
                  f"{whole_median:.4g} (pooled {whole_pooled:.4g})  per weight {rows[name]['min_tensor']:.3g}–"
                  f"{rows[name]['max_tensor']:.3g}  ({took:.2f} s)")
        out[label] = {"sketched_tensors": len(sketch.values),
                      "sketch_bytes": (pack_dir / "base_sketch.safetensors").stat().st_size, "models": rows}
    return out


def layer_kind(name: str) -> str:
    return name.rsplit(".", 2)[-2]


def ratios(pack_dir: Path, pre: Path) -> dict:
    report = quantization_report(load_pack(pack_dir), pre)
    by_kind: dict[str, list[float]] = {}
    for r in report.layers:
        by_kind.setdefault(layer_kind(r.name), []).append(r.ratio)
    values = [r.ratio for r in report.layers]
    out = {"summary": report.summary(), "by_kind_median": {k: statistics.median(v) for k, v in sorted(by_kind.items())},
           "layers": {r.name: [r.residual, r.delta, r.ratio] for r in report.layers},
           "quartiles": statistics.quantiles(values, n=4)}
    print(f"{pack_dir.name}: ratio median {out['summary']['median']:.1f} (min {out['summary']['min']:.1f}, "
          f"max {out['summary']['max']:.1f}); by kind {json.dumps({k: round(v, 1) for k, v in out['by_kind_median'].items()})}")
    return out


def cosine(a: Path, b: Path, pre: Path) -> float:
    """cos(τ_a, τ_b) over the whole model, through the LoRA factors."""
    ws = WeightSet.open(pre)
    target = TargetModel.from_weights(ws, read_config(pre))
    ta, tb = (TaskVector.from_pack(load_pack(p), target, ws) for p in (a, b))
    ab = sum(terms_inner(ta.terms[n], tb.terms[n], "cpu") for n in ta.keys() if n in tb)
    aa = sum(terms_inner(ta.terms[n], ta.terms[n], "cpu") for n in ta.keys())
    bb = sum(terms_inner(tb.terms[n], tb.terms[n], "cpu") for n in tb.keys())
    return ab / math.sqrt(aa * bb)


def corrected(folded: Path, pre: Path, pack_dir: Path, out: Path) -> Path:
    """``folded`` + (dequant(Q4(θpre)) − θpre) on the layers the QLoRA pack adapted: θG moved onto the 4-bit
    base the adapter was trained against, as far as the adapted layers go."""
    import shutil

    import bitsandbytes.functional as bnbf
    from safetensors.torch import load_file, save_file

    q = load_pack(pack_dir).manifest.training.quantization_config
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(folded, out)
    base = WeightSet.open(pre)
    for f in out.glob("*.safetensors"):
        tensors = load_file(f)
        for n in q.residual_norms:
            if n in tensors:
                w = base.get(n).to(getattr(torch, q.quant_dtype))
                packed, state = bnbf.quantize_4bit(w, blocksize=q.block_size, compress_statistics=q.double_quant,
                                                   quant_type=q.quant_type)
                shift = bnbf.dequantize_4bit(packed, state).float() - w.float()
                tensors[n] = (tensors[n].float() + shift).to(tensors[n].dtype)
        save_file(tensors, f, metadata={"format": "pt"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, required=True)
    args = ap.parse_args()
    cfg = load_study_config(args.config)
    run = StudyRun(cfg, print)
    out = run.out
    run.base, run.general = out / "pre", out / "general"
    files = demo_data(out, cfg).files
    run.data = files
    g_size = files.counts["general"]
    skill = "science"
    cft = run.train(f"{skill}-cft", "skill", strategy="cft", general=run.general, data=files.train[skill],
                    out=run.models / f"{skill}-cft").path
    qlora = run.train(f"{skill}-qlora", "skill", mode="qlora", data=files.train[skill],
                      description=f"{skill} skill (QLoRA on the 4-bit θpre)")
    models = {"θpre": run.base, "θG": run.general, "θCFT": cft}
    for seed in (1, 2):
        models[f"fresh-{seed}"] = fresh_init(run.base, out / "models" / f"fresh-{seed}", seed)
    dense = out / "adapters" / "cft-dense"
    if not (dense / "skill.json").is_file():  # every weight sketched, norms and embeddings included
        extract_pack(ExtractRequest(model=cft, base=run.base, name="cft-dense", out=dense, instances=40,
                                    progress=False))
    record = {"distances": distances({"science (LoRA)": run.adapters / skill, "science (QLoRA)": qlora.path,
                                      "θCFT − θpre (dense)": dense}, models)}
    record["ratios"] = {"lora": ratios(run.adapters / skill, run.base), "qlora": ratios(qlora.path, run.base)}
    record["cosine_lora_qlora"] = cosine(run.adapters / skill, qlora.path, run.base)
    print(f"cos(τ LoRA, τ QLoRA) = {record['cosine_lora_qlora']:.3f}")
    sets = run.skill_sets(skill)
    scores = {"θG": run.score_folder("θG", run.general, sets, {"kind": "θG"})}
    for omega in (files.counts[skill] / g_size, 1.0):
        for label, pack in (("LoRA", skill), ("QLoRA", qlora.path.name)):
            folder = out / "models" / f"{label}-{omega:g}"
            run.fold([pack], folder, run.general, [omega])
            scores[f"{label} ω={omega:g}"] = run.score_folder(f"{label} ω={omega:g}", folder, sets, {"kind": label})
            if label == "QLoRA":
                fixed = corrected(folder, run.base, qlora.path, out / "models" / f"QLoRA-corrected-{omega:g}")
                scores[f"QLoRA+correction ω={omega:g}"] = run.score_folder(
                    f"QLoRA+correction ω={omega:g}", fixed, sets, {"kind": "QLoRA+correction"})
    record["scores"] = scores
    record["costs"] = run.costs
    path = out / "results" / "provenance_qlora.json"
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"→ {path}")


if __name__ == "__main__":
    main()
