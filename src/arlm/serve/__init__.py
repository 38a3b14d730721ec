"""An OpenAI-compatible HTTP server for runs (FastAPI + uvicorn: the ``serve`` extra).

``create_app(model, tokenizer, ...)`` builds the app; ``serve_run(RUN, host, port)`` loads a run
and serves it. FastAPI is imported only when an app is built.
"""

from __future__ import annotations

from .template import ChatTemplate, run_template

__all__ = ["ChatTemplate", "create_app", "run_template", "serve_run"]


def create_app(*args, **kwargs):
    """See ``arlm.serve.app.create_app``."""
    try:
        from .app import create_app as _create
    except ImportError as e:
        raise ImportError(f"arlm serve needs the 'serve' extra: pip install 'arlm[serve]' ({e})") from None
    return _create(*args, **kwargs)


def serve_run(run_dir, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", **limits) -> None:
    """Load ``run_dir`` and serve it until interrupted."""
    try:
        import uvicorn
    except ImportError:
        raise ImportError("arlm serve needs the 'serve' extra: pip install 'arlm[serve]'") from None
    from arlm.run import load_run

    run = load_run(run_dir, device=device)
    app = create_app(run.model, run.tokenizer, name=run.run_dir.name, chat_template=run_template(run.run_dir),
                     **limits)
    uvicorn.run(app, host=host, port=port, log_level="warning")
