"""Step truth used to judge PRMs and Math-Shepherd labels on arith (bstar.tasks.prm.true_step_labels)."""

import pytest

from bstar.tasks.prm import true_step_labels

Q = "23+45-12=?"


@pytest.mark.parametrize(
    "response, expected",
    [
        ("23+45=68; 68-12=56. #### 56", [True, True]),
        ("23+45=68; 68-12=55. #### 55", [True, False]),  # wrong arithmetic in the last step
        ("23+45=67; 67-12=55. #### 55", [False, False]),  # cumulative: a wrong step poisons the rest
        ("23+45=68. #### 68", [False]),  # stopped early: every step right, the answer is not
        ("23+45=68; 68-12=56. #### 57", [True, False]),  # the final answer does not follow the steps
        ("23+45=68; 68-12=56; 56+1=57. #### 57", [True, True, False]),  # a step the question lacks
    ],
)
def test_arith_truth_judges_the_last_step_by_the_whole_solution(response, expected):
    n = len(expected)
    assert true_step_labels("arith", response, Q, n) == expected
    assert true_step_labels("arith-steps", response, Q, n) == expected


def test_truth_is_unknown_off_arith_or_when_step_counts_disagree():
    assert true_step_labels("gsm8k", "a\n\nb", "q", 2) == [None, None]
    assert true_step_labels("arith", "23+45=68; 68-12=56. #### 56", Q, 3) == [None, None, None]
