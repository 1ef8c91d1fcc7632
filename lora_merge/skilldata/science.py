"""Science: extract one field from a short paper abstract, in several layouts and question wordings.

Each abstract states five fields (task, method, dataset, metric, score) drawn from the vocabularies below;
dataset names are built from syllables and a year, so there are well over a thousand. Layouts: labelled
sections, ``key: value`` lines and prose with its sentences in any order (training); prose written another way
and a bulleted list with other labels (held out). Wordings put the question after or before the abstract; two
are held out. Answer formats (value only, ``Label: value``, none said) are shared by all splits, and an eval
accepts either form (metric ``exact``, SQuAD-normalised).
"""

from __future__ import annotations

import random

from lora_merge.skilldata.generated import Generator, Item
from lora_merge.skilldata.model import Source

TASKS = ("predicting hospital readmission", "segmenting retinal vessels", "classifying galaxy morphology",
         "forecasting river discharge", "detecting credit card fraud", "translating legal documents",
         "estimating crop yield", "recognising bird songs", "summarising clinical notes",
         "predicting protein stability", "detecting road cracks", "tagging parts of speech",
         "forecasting electricity demand", "diagnosing skin lesions", "predicting student dropout",
         "identifying plant diseases", "localising sound sources", "detecting sarcasm in social media posts",
         "predicting solar flares", "mapping urban heat islands")
METHODS = ("gradient-boosted trees", "a graph neural network", "a random forest", "a convolutional neural network",
           "logistic regression", "a transformer encoder", "support vector machines", "k-nearest neighbours",
           "a recurrent neural network", "Bayesian ridge regression", "a U-Net", "contrastive pretraining",
           "a mixture of experts", "Gaussian process regression", "a temporal convolutional network",
           "a variational autoencoder")
METRICS = ("accuracy", "F1 score", "AUROC", "mean absolute error", "Dice coefficient", "BLEU", "RMSE",
           "precision at 10", "Matthews correlation", "top-1 accuracy", "R squared", "mean average precision")
_HEADS = ("Nor", "Vel", "Kar", "Ost", "Lum", "Bri", "Tal", "Mer", "Sol", "Quen", "Dar", "Fen")
_TAILS = ("dex", "ora", "vale", "mark", "ton", "ia", "wick", "berg")
FIELDS = {"task": ("research task", "Task"), "method": ("method", "Method"), "dataset": ("dataset", "Dataset"),
          "metric": ("evaluation metric", "Metric"), "score": ("reported score", "Score")}
FORMATS = ("", "\nAnswer with the value only.", "\nReply in the form '{label}: <value>'.")


def record(rng: random.Random) -> dict[str, str]:
    score = f"0.{rng.randint(40, 99)}" if rng.random() < 0.5 else f"{rng.randint(40, 99)}.{rng.randint(0, 9)}%"
    return {"task": rng.choice(TASKS), "method": rng.choice(METHODS),
            "dataset": f"{rng.choice(_HEADS)}{rng.choice(_TAILS)}-{rng.randint(2009, 2023)}",
            "metric": rng.choice(METRICS), "score": score}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# ---- layouts: record → abstract text -------------------------------------------------------------------------
def labelled(r: dict, rng: random.Random) -> str:
    methods = [f"we apply {r['method']}", f"we use the {r['dataset']} dataset"]
    rng.shuffle(methods)
    return (f"{rng.choice(('Objective', 'Aim', 'Purpose'))}: We address {r['task']}.\n"
            f"{rng.choice(('Methods', 'Approach'))}: {_cap(methods[0])}, and {methods[1]}.\n"
            f"{rng.choice(('Results', 'Findings'))}: The model reaches a {r['metric']} of {r['score']}.\n"
            f"{rng.choice(('Conclusion', 'Conclusions'))}: The approach is a strong baseline for this problem.")


def keyvalue(r: dict, rng: random.Random) -> str:
    keys = list(FIELDS)
    rng.shuffle(keys)
    sep = rng.choice(("\n", "; "))
    return sep.join(f"{FIELDS[k][1]}: {r[k]}" for k in keys)


_PROSE_A = {
    "task": ("This study addresses {task}.", "We focus on {task}."),
    "method": ("Our model is built on {method}.", "The proposed system uses {method}."),
    "dataset": ("Experiments are run on the {dataset} dataset.", "We evaluate on the {dataset} dataset."),
    "result": ("It achieves a {metric} of {score}.", "The best {metric} we obtain is {score}."),
}


def prose_a(r: dict, rng: random.Random) -> str:
    sentences = [rng.choice(v).format(**r) for v in _PROSE_A.values()]
    rng.shuffle(sentences)
    return " ".join(sentences)


_PROSE_B = (
    "In this work on {task}, the authors train {method} on {dataset} and report a {metric} of {score}.",
    "Reporting a {metric} of {score} on {dataset}, this paper shows that {method} works well for {task}.",
    "{Method} is applied to {task}; on the {dataset} benchmark it scores {score} in {metric}.",
    "Using data from {dataset}, we revisit {task} with {method}, which attains {score} {metric}.",
)


def prose_b(r: dict, rng: random.Random) -> str:
    return rng.choice(_PROSE_B).format(Method=_cap(r["method"]), **r)


_BULLET_LABELS = {"task": "Problem", "method": "Approach", "dataset": "Data", "metric": "Evaluated by",
                  "score": "Result"}


def bullets(r: dict, rng: random.Random) -> str:
    keys = list(FIELDS)
    rng.shuffle(keys)
    return "\n".join(f"- **{_BULLET_LABELS[k]}**: {r[k]}" for k in keys)


LAYOUTS = {"labelled": labelled, "keyvalue": keyvalue, "prose_a": prose_a}
HELD_OUT_LAYOUTS = {"prose_b": prose_b, "bullets": bullets}

# ---- wordings: (abstract, field phrase) → prompt ---------------------------------------------------------------
WORDINGS = {
    "what_is": "{abstract}\n\nQuestion: What is the {phrase}?",
    "which_report": "{abstract}\n\nWhich {phrase} does this abstract report?",
    "extract": "Extract the {phrase} from the following abstract.\n\n{abstract}",
    "read_then": "Read the abstract below and tell me the {phrase}.\n\n{abstract}",
}
HELD_OUT_WORDINGS = {
    "need_one": "{abstract}\n\nI only need one detail from this: the {phrase}. What is it?",
    "according": "According to the abstract below, what was the {phrase}?\n\n{abstract}",
}


def draw(rng: random.Random, layout: str, wording: str) -> Item:
    r = record(rng)
    abstract = {**LAYOUTS, **HELD_OUT_LAYOUTS}[layout](r, rng)
    field = rng.choice(list(FIELDS))
    phrase, label = FIELDS[field]
    fmt = rng.choice(FORMATS).format(label=label)
    prompt = {**WORDINGS, **HELD_OUT_WORDINGS}[wording].format(abstract=abstract, phrase=phrase) + fmt
    answer = f"{label}: {r[field]}" if "form '" in fmt else r[field]
    return Item(prompt, answer, (r[field], f"{label}: {r[field]}"))


SCIENCE = Generator("science", tuple(LAYOUTS), tuple(HELD_OUT_LAYOUTS), tuple(WORDINGS), tuple(HELD_OUT_WORDINGS),
                    draw, Source("lora_merge science generator", "Apache-2.0 (this project)",
                                 "lora_merge/skilldata/science.py", "procedural abstracts from vocabularies"))
