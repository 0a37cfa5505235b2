"""Stage `params`: stop when conf/ was edited but params.yaml was not recomposed from it."""

from pathlib import Path

from rnnlab.config import check_fresh, load_params
from rnnlab.errors import entry_point


@entry_point
def main() -> None:
    check_fresh(Path(load_params().paths.state) / "params.json")


if __name__ == "__main__":
    main()
