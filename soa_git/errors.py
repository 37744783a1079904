"""The errors a user can cause. Each message is one sentence meant for the user."""


class SoaError(Exception):
    """Base of every error the CLI turns into one line and a non-zero exit."""


class ConfigError(SoaError):
    """The configuration or the command line asks for something impossible."""


class RepositoryError(SoaError):
    """The repository is missing, empty, or in a state soa-git will not touch."""


class TargetError(SoaError):
    """The file or function to work on does not exist or is not a skeleton."""


class CodeSyntaxError(SoaError):
    """Python source does not parse; the message names the line and column."""


class ClusterError(SoaError):
    """The Ray cluster asked for cannot be reached, or has no node left to run tests on."""


class ModelError(SoaError):
    """The model endpoint failed: unreachable, refused the key, or kept failing."""


class AnswerError(SoaError):
    """A model answer could not be used; the message is fed back to the model."""


class BudgetExhausted(SoaError):
    """The run's or an agent's token budget is spent."""


class OwnershipError(SoaError):
    """An agent tried to change a file it does not own."""
