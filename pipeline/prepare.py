"""DVC stage `prepare` (dvc.yaml): read, clean and split the corpus. The work is rnnlab.stages.prepare.run."""

from rnnlab.stages import main, prepare

if __name__ == "__main__":
    main(prepare.run)
