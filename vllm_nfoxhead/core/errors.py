"""The one exception type users see from bad NFoxHead input.

Every message names the problem and the fix in one line, so that a failing
`vllm serve` prints something a user can act on before any engine memory
is allocated.
"""


class NFoxHeadError(ValueError):
    """Bad NFoxHead input (heads directory, config, tree, options).

    Subclasses ValueError so vLLM's own config validation surfaces it as a
    configuration error rather than a crash.
    """

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"NFoxHead: {problem}. Fix: {fix}")
