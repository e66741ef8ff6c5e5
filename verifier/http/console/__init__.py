"""The operator console (server-rendered pages under /console). Include it in the app with
`app.include_router(console_router(engine))`."""

from verifier.http.console.routes import console_router

__all__ = ["console_router"]
