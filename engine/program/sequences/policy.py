"""The referral-ask policy: never ask a partner, a detractor or anyone scoring below 5."""

from __future__ import annotations

from engine.program.sequences.model import MIN_REFERRAL_SCORE, Audience, Trigger


def policy_reasons(audience: Audience | None, trigger: Trigger | None) -> list[str]:
    """Why a referral ask in this sequence could reach a partner, detractor or low scorer."""
    reasons = []
    if audience is not None:
        if audience.kind != "customer":
            reasons.append(f"partners (audience.kind is {audience.kind})")
        if "detractor" in audience.nps:
            reasons.append("detractors (audience.nps includes detractor)")
        if audience.min_score is None:
            reasons.append(
                f"contacts scoring below {MIN_REFERRAL_SCORE} (audience.min_score is null)"
            )
        elif audience.min_score < MIN_REFERRAL_SCORE:
            reasons.append(
                f"contacts scoring below {MIN_REFERRAL_SCORE}"
                f" (audience.min_score is {audience.min_score})"
            )
    elif trigger is not None:
        if trigger.nps is None:
            reasons.append("detractors (the trigger has no nps filter)")
        elif "detractor" in trigger.nps:
            reasons.append("detractors (trigger.nps includes detractor)")
    return reasons


def refusal(step_id: str, reasons: list[str]) -> str:
    """What to say at a ``referral_ask: true`` that ``reasons`` forbid."""
    return (
        f"step {step_id!r}: referral_ask in a sequence that can reach {'; '.join(reasons)}."
        " Ask only promoters (and passives): set audience.nps (or trigger.nps) to"
        f" promoter or [promoter, passive], keep min_score at {MIN_REFERRAL_SCORE} or"
        " more and kind at customer"
    )
