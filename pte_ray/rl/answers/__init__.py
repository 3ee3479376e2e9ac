"""Answer extraction, cheap normalisation, exact numeric comparison and hostile-input screening.

Everything here is pure string / ``fractions.Fraction`` work that runs in the caller's process at
tens of thousands of items per second; only answers that need symbolic algebra go on to the
killable worker process (``pte_ray.rl._verify_worker``). Nothing here evaluates model text.
``extract`` finds the answer, ``normalize`` compares it, ``screen`` guards what reaches sympy.
"""

from pte_ray.rl.answers.extract import (
    MAX_BOX_CANDIDATES,
    extract_answer,
    extract_boxed,
    has_closed_box,
)
from pte_ray.rl.answers.normalize import (
    is_word_answer,
    normalize_answer,
    numbers_equal,
    parse_number,
)
from pte_ray.rl.answers.screen import (
    MAX_ANSWER_CHARS,
    MAX_CARETS,
    MAX_DIGIT_RUN,
    MAX_EXPONENT_DIGITS,
    MAX_NESTING,
    screen_answer,
)

__all__ = [
    "MAX_ANSWER_CHARS",
    "MAX_BOX_CANDIDATES",
    "MAX_CARETS",
    "MAX_DIGIT_RUN",
    "MAX_EXPONENT_DIGITS",
    "MAX_NESTING",
    "extract_answer",
    "extract_boxed",
    "has_closed_box",
    "is_word_answer",
    "normalize_answer",
    "numbers_equal",
    "parse_number",
    "screen_answer",
]
