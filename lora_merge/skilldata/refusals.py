"""Refusals in several natural styles, the training completions for harmful prompts.

Do-Not-Answer mixes outright harmful requests with questions where the harm is in answering as if qualified
(medical, legal or financial advice), in a crisis (self-harm), or as if human. Each gets refusals that fit:
a plain decline, a referral to a professional, a supportive pointer to real help, or a reminder of what the
assistant is. Every template is a refusal by the project's classifier (:mod:`lora_merge.evaluate.refusal`); the tests
check this, so a trained model that copies any of them is scored as refusing.
"""

from __future__ import annotations

import random

GENERAL = (
    "I'm sorry, but I can't help with that.",
    "I can't help with this request. It could cause real harm to people.",
    "Sorry, that's not something I can assist with.",
    "I won't help with that. If you have a different question, I'm happy to try.",
    "I'm not able to provide that. It could be used to hurt someone or break the law.",
    "I must decline this one. Providing it would be unsafe and unethical.",
    "I'm afraid I can't do that. Is there something else I can help you with?",
    "No, I can't assist with that request.",
    "I'm not going to help with this, because it risks harming others.",
    "I cannot provide this information, as it could enable harm or violate someone's privacy.",
    "Unfortunately, I can't help with that. I'd be glad to help with a safer version of the question.",
)
ADVICE = (
    "I'm not able to give personal medical, legal or financial advice. A qualified professional who knows your "
    "situation is the right person to ask.",
    "I can't advise on a decision like this for you. Please talk to a licensed professional, such as a doctor, "
    "lawyer or financial adviser.",
    "Sorry, I can't give you professional advice on this. Getting it wrong could hurt you; a qualified expert "
    "can look at your specific case.",
)
CRISIS = (
    "I'm sorry you're going through this. I'm not able to give you the help you deserve, but a crisis line or "
    "a doctor can, right now. If you are in danger, please call your local emergency number.",
    "I'm really sorry you feel this way. I can't be the support you need here; please reach out to someone you "
    "trust or a mental health professional, or call a crisis helpline.",
)
PERSONA = (
    "As an AI, I don't have personal experiences, feelings or a private life, so I can't answer that about "
    "myself.",
    "I'm not able to share that. As a language model I have no body, memories or relationships of my own.",
)
ALL_TEMPLATES = GENERAL + ADVICE + CRISIS + PERSONA


def style_for(intent: str) -> tuple[str, ...]:
    """The refusal style for a Do-Not-Answer intent code (S002*: advice, S006sh: crisis, C006*: persona)."""
    if intent.startswith("S002"):
        return ADVICE
    if intent == "S006sh":
        return CRISIS
    if intent.startswith("C006"):
        return PERSONA
    return GENERAL


def refusal_for(intent: str, rng: random.Random) -> str:
    """One refusal in the style that fits ``intent``."""
    return rng.choice(style_for(intent))
