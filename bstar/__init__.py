"""bstar: self-improving reasoning pipelines (STaR, ReST-EM, RFT, B-STaR) on Prefect, Parquet and DuckDB."""

__version__ = "0.1.0"


def code_version() -> str:
    """Package version plus the git commit when running from a checkout (stored in `runs`)."""
    import subprocess
    from pathlib import Path

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__
