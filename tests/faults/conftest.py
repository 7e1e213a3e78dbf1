from tests.pipeline.conftest import stack

__all__ = ["stack"]
