"""The ``rbmrec`` console script: ``db upgrade``, ``serve``, ``import``, ``train``, ``create-api-key``, ``demo``,
``evaluate`` (rbm_core's offline evaluation) and ``worker`` (the training-jobs worker, registered by service/worker.py)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path


def _settings(args: argparse.Namespace):
    from service.config import Settings

    overrides = {"database_url": args.database_url} if getattr(args, "database_url", None) else {}
    return Settings(**overrides)


def _database(settings):
    from service.db import Database

    return Database(settings.database_url, pool_size=2)


def _fail(message: str) -> int:
    print(f"rbmrec: error: {message}", file=sys.stderr)
    return 1


# db -----------------------------------------------------------------------------------------------------------

def _db(args: argparse.Namespace) -> int:
    from service import migrate

    settings = _settings(args)
    if args.db_command == "upgrade":
        migrate.upgrade(settings.database_url, args.revision)
        print(f"database at {migrate.current_revision(_database(settings).engine)} (head {migrate.head_revision()})")
    else:
        print(f"database at {migrate.current_revision(_database(settings).engine)} (head {migrate.head_revision()})")
    return 0


# serve --------------------------------------------------------------------------------------------------------

def _serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    if args.database_url:
        os.environ["DATABASE_URL"] = args.database_url  # worker processes read settings from the environment
    uvicorn.run("service.main:app_factory", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level=args.log_level, access_log=False)
    return 0


# import -------------------------------------------------------------------------------------------------------

def detect_format(path: Path) -> str:
    with open(path, "rb") as handle:
        first = handle.readline().decode("utf-8", errors="replace")
    if "::" in first:
        return "movielens"
    if "\t" in first:
        return "movielens-100k"
    return "csv"


def _import(args: argparse.Namespace) -> int:
    from service.errors import ApiError
    from service.ratings.loader import RatingLoader
    from service.ratings.parsing import iter_file_rows

    settings = _settings(args)
    path = Path(args.path)
    if not path.is_file():
        return _fail(f"{path} is not a file")
    fmt = args.format if args.format != "auto" else detect_format(path)
    db = _database(settings)
    started = time.perf_counter()
    try:
        with db.engine.begin() as connection:
            exclusive = args.exclusive
            if exclusive is None:  # auto: bulk mode for an initial load into an empty ratings table
                exclusive = connection.dialect.name == "postgresql" and not connection.exec_driver_sql(
                    "SELECT EXISTS (SELECT 1 FROM ratings)").scalar()
            loader = RatingLoader(connection, create_missing=not args.no_create_missing, exclusive=exclusive)
            if loader.postgresql and fmt in ("movielens", "movielens-100k") and not args.skip_header:
                # COPY the file's bytes straight into the staging table; the checks run in SQL.
                with open(path, "rb") as handle:
                    loader.add_delimited_file(handle, separator=b"::" if fmt == "movielens" else b"\t",
                                              scale=settings.rating_scale)
            else:
                chunk: list = []
                for row in iter_file_rows(str(path), fmt=fmt, scale=settings.rating_scale,
                                          skip_header=args.skip_header):
                    chunk.append(row)
                    if len(chunk) >= 100_000:
                        loader.add(chunk)
                        chunk = []
                loader.add(chunk)
            staged = time.perf_counter()
            result = loader.apply()
            if args.titles:
                _import_titles(connection, Path(args.titles))
    except ApiError as exc:
        return _fail(f"{path}: {exc.message}; nothing was imported")
    elapsed = time.perf_counter() - started
    print(json.dumps({"file": str(path), "format": fmt, "exclusive": bool(exclusive), **result.__dict__,
                      "seconds": round(elapsed, 3),
                      "stage_seconds": round(staged - started, 3),
                      "rows_per_second": round(result.rows / elapsed) if elapsed > 0 else None}))
    return 0


def _import_titles(connection, path: Path) -> None:
    """MovieLens titles: ``movies.dat`` (``id::title::genres``) or ``u.item`` (``id|title|...``)."""
    from sqlalchemy import text

    rows = []
    with open(path, encoding="latin-1") as handle:
        for line in handle:
            parts = line.rstrip("\n").split("::") if "::" in line else line.rstrip("\n").split("|")
            if len(parts) >= 2:
                genres = parts[2].split("|") if "::" in line and len(parts) > 2 else None
                rows.append({"id": parts[0], "title": parts[1], "attributes": json.dumps({"genres": genres} if genres else {})})
    cast = "CAST(:attributes AS JSONB)" if connection.dialect.name == "postgresql" else ":attributes"
    connection.execute(text(f"UPDATE items SET title = :title, attributes = {cast} WHERE external_id = :id"), rows)


# train --------------------------------------------------------------------------------------------------------

def _parse_set(values: list[str]) -> dict:
    out = {}
    for item in values:
        key, _, raw = item.partition("=")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _train(args: argparse.Namespace) -> int:
    from service.errors import ApiError
    from service.models import repository
    from service.models import service as registry
    from service.models.training import activate, train_model_version

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(args)
    db = _database(settings)
    try:
        with db.session_factory() as session, session.begin():
            definition = repository.definition_by_name(session, args.name)
            if definition is None:
                if not args.create:
                    return _fail(f"model {args.name!r} does not exist (add --create to define it)")
                definition = registry.create_definition(session, fields={
                    "name": args.name, "kind": args.kind, "orientation": args.orientation,
                    "hyperparameters": _parse_set(args.set), "holdout_fraction": args.holdout, "description": None,
                    "schedule_interval_seconds": None, "schedule_cron": None, "trigger_new_ratings": False, "gate": {}})
            elif args.set:
                registry.update_definition(session, name=args.name, changes={
                    "hyperparameters": {**(definition.hyperparameters or {}), **_parse_set(args.set)}})
            definition_id = definition.id
    except ApiError as exc:
        return _fail(exc.message)

    def progress(epoch: int, total: int, metrics: dict) -> None:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k not in ("epoch",))
        print(f"epoch {epoch + 1}/{total}: {shown}", flush=True)

    version = train_model_version(session_factory=db.session_factory, definition_id=definition_id,
                                  progress_callback=progress, device=args.device, reason="rbmrec train")
    summary = {k: v for k, v in version.metrics.items() if k != "history"}
    if args.activate:
        activate(session_factory=db.session_factory, version_id=version.id)
    print(json.dumps({"model": args.name, "version": version.version, "active": bool(args.activate), **summary}))
    return 0


# create-api-key -----------------------------------------------------------------------------------------------

def _create_api_key(args: argparse.Namespace) -> int:
    from service.auth.service import create_api_key

    db = _database(_settings(args))
    with db.session_factory() as session, session.begin():
        row, key = create_api_key(session, name=args.name, role=args.role)
    print(key)
    print(f"(key {row.prefix}… named {args.name!r}, role {args.role}; shown once, stored hashed)", file=sys.stderr)
    return 0


# demo ---------------------------------------------------------------------------------------------------------

def _demo(args: argparse.Namespace) -> int:
    from sqlalchemy import func, select

    from service import demo, migrate
    from service.auth.service import create_api_key
    from service.catalog.models import Item, User
    from service.models import repository
    from service.models import service as registry
    from service.models.training import activate, train_model_version
    from service.ratings.loader import load_rows
    from service.ratings.models import Rating

    logging.basicConfig(level=logging.WARNING)
    settings = _settings(args)
    print(f"database: {settings.database_url}")
    migrate.upgrade(settings.database_url)
    db = _database(settings)
    with db.session_factory() as session, session.begin():
        if not session.scalar(select(func.count()).select_from(Rating)):
            data = demo.generate(seed=args.seed)
            session.add_all(Item(external_id=i, title=t, attributes=a) for i, t, a in data.items)
            session.add_all(User(external_id=u, attributes=a) for u, a in data.users)
            session.flush()
            result = load_rows(session.connection(), ((n, u, i, v, None) for n, (u, i, v) in enumerate(data.ratings)))
            print(f"generated the demo data: {len(data.users)} users in {len(demo.GENRES)} taste groups, "
                  f"{len(data.items)} items, {result.ratings_written} ratings")
        definition = repository.definition_by_name(session, demo.DEMO_MODEL["name"])
        if definition is None:
            fields = {**demo.DEMO_MODEL, "holdout_fraction": 0.1, "schedule_interval_seconds": None,
                      "schedule_cron": None, "trigger_new_ratings": False, "gate": {}}
            if args.epochs:
                fields["hyperparameters"] = {**fields["hyperparameters"], "epochs": args.epochs}
            definition = registry.create_definition(session, fields=fields)
        definition_id = definition.id
        has_active = repository.active_versions_by_definition(session).get(definition_id) is not None
    if args.retrain or not has_active:
        started = time.perf_counter()
        print("training the demo model ...", flush=True)
        version = train_model_version(session_factory=db.session_factory, definition_id=definition_id,
                                      reason="rbmrec demo")
        activate(session_factory=db.session_factory, version_id=version.id)
        m = version.metrics
        print(f"trained version {version.version} in {time.perf_counter() - started:.1f} s: held-out RMSE "
              f"{m['rmse']:.3f} (item-mean baseline {m['baseline_item_mean_rmse']:.3f}, global mean "
              f"{m['baseline_global_mean_rmse']:.3f})")
    _check_planted_groups(db)
    with db.session_factory() as session, session.begin():
        _, key = create_api_key(session, name="demo", role="admin")
    url = f"http://{args.host}:{args.port}"
    print(f"\nserving at {url}  (OpenAPI docs: {url}/docs, dashboard: {url}/admin)")
    print(f"admin API key: {key}")
    print("try:")
    print(f"  curl -s -H 'X-API-Key: {key}' '{url}/v1/users/user-0001/recommendations?n=5'")
    print(f"  curl -s -H 'X-API-Key: {key}' -H 'Content-Type: application/json' -d "
          f"'{{\"ratings\": [{{\"item\": \"item-0001\", \"rating\": 5}}, {{\"item\": \"item-0002\", \"rating\": 5}}, "
          f"{{\"item\": \"item-0101\", \"rating\": 2}}], \"n\": 5}}' "
          f"{url}/v1/recommendations", flush=True)
    if args.no_serve:
        return 0
    import os

    import uvicorn

    os.environ["DATABASE_URL"] = settings.database_url
    uvicorn.run("service.main:app_factory", factory=True, host=args.host, port=args.port, log_level="warning")
    return 0


def _check_planted_groups(db) -> None:
    """Print how often a taste group's top-10 comes from the genre it loves (chance: 25%)."""
    from collections import Counter

    from service.config import get_settings
    from service.main import scoring_device
    from service.serving import service as serving
    from service.serving.cache import ModelCache

    cache = ModelCache(db.session_factory, refresh_seconds=0, device=scoring_device(get_settings()))
    loaded = cache.get("demo")
    from sqlalchemy import select

    from service.catalog.models import User

    hits: Counter = Counter()
    totals: Counter = Counter()
    with db.session_factory() as session:
        users = session.execute(select(User.external_id, User.attributes).order_by(User.id).limit(200)).all()
        for external_id, attributes in users:
            group = (attributes or {}).get("taste_group")
            if group is None:
                continue
            known = serving.known_for_user(session, loaded, external_id)
            answer = serving.recommend(session, loaded, known, n=10, offset=0, exclude_rated=True)
            hits[group] += sum(1 for item in answer["items"] if (item["title"] or "").startswith(group))
            totals[group] += len(answer["items"])
    shares = ", ".join(f"{g}: {hits[g] / totals[g]:.0%}" for g in sorted(totals) if totals[g])
    print(f"top-10 recommendations from the taste group's own genre (chance 25%): {shares}")


# evaluate / worker --------------------------------------------------------------------------------------------

def _delegate(module: str, what: str, argv: list[str]) -> int:
    if importlib.util.find_spec(module) is None:
        return _fail(f"{what} is not available in this build ({module} is missing)")
    return int(importlib.import_module(module).main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Pass-through commands keep their own argument parsers.
    if argv[:1] == ["evaluate"]:
        return _delegate("rbm_core.ratings.evaluate", "rbmrec evaluate", argv[1:])

    parser = argparse.ArgumentParser(prog="rbmrec", description="Boltzmann-machine recommender")
    parser.add_argument("--database-url", help="overrides DATABASE_URL (default: the embedded SQLite file)")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database schema (Alembic migrations)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply the migrations")
    up.add_argument("--revision", default="head")
    db_sub.add_parser("current", help="show the schema revision")
    db.set_defaults(func=_db)

    serve = sub.add_parser("serve", help="run the API under uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="API processes (they share nothing but the database)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)

    imp = sub.add_parser("import", help="bulk-load ratings (MovieLens ratings.dat / u.data, or CSV user,item,rating[,timestamp])")
    imp.add_argument("path")
    imp.add_argument("--format", choices=["auto", "movielens", "movielens-100k", "csv"], default="auto")
    imp.add_argument("--skip-header", action="store_true")
    imp.add_argument("--titles", help="MovieLens movies.dat or u.item, to set item titles and genres")
    imp.add_argument("--no-create-missing", action="store_true", help="fail on users/items not in the database")
    imp.add_argument("--exclusive", action=argparse.BooleanOptionalAction, default=None,
                     help="PostgreSQL bulk mode for large loads: lock the ratings table for the import and rebuild its "
                          "foreign keys and indexes once instead of checking every row (readers wait meanwhile); "
                          "default: on when the ratings table is empty")
    imp.set_defaults(func=_import)

    train = sub.add_parser("train", help="train one version of a model now (synchronously)")
    train.add_argument("name")
    train.add_argument("--create", action="store_true", help="define the model if it does not exist")
    train.add_argument("--kind", default="rbm", choices=["rbm", "dbm", "bm"])
    train.add_argument("--orientation", default="user", choices=["user", "item"])
    train.add_argument("--holdout", type=float, default=0.1)
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a hyperparameter (JSON value), e.g. --set num_hidden=100 --set epochs=20")
    train.add_argument("--activate", action=argparse.BooleanOptionalAction, default=True)
    train.add_argument("--device", default=None)
    train.set_defaults(func=_train)

    key = sub.add_parser("create-api-key", help="create an API key and print it (once)")
    key.add_argument("--role", choices=["admin", "read"], default="read")
    key.add_argument("--name", default="cli")
    key.set_defaults(func=_create_api_key)

    demo = sub.add_parser("demo", help="the README's main job: demo data, a first model, and the API serving it")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--epochs", type=int, default=None)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--retrain", action="store_true", help="train a new version even if one is active")
    demo.add_argument("--no-serve", action="store_true", help="prepare everything, print, and exit")
    demo.set_defaults(func=_demo)

    sub.add_parser("evaluate", help="offline evaluation of rating models (rbm_core.ratings.evaluate)", add_help=False)
    if importlib.util.find_spec("service.worker") is not None:
        # The training-jobs worker registers its own sub-command (service/worker.py).
        importlib.import_module("service.worker").add_command(sub)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
