"""The `assistant` command. Subcommands import their heavy modules lazily, so `assistant --help`
stays fast and the chat side never imports TRL.

Each subcommand is a function `cmd_<name>(cfg, args) -> int` in the module that owns the work.
"""
import argparse
import importlib
import logging
import sys

from assistant.config import Config

# subcommand -> (module, function, help)
COMMANDS = {
    "serve": ("assistant.server", "cmd_serve", "serve the web chat and the OpenAI-compatible API"),
    "chat": ("assistant.terminal", "cmd_chat", "chat in the terminal"),
    "logs": ("assistant.terminal", "cmd_logs", "show recent turns and feedback"),
    "export": ("learning.datasets", "cmd_export", "export feedback as JSONL in TRL's SFT and preference formats"),
    "backup": ("assistant.terminal", "cmd_backup", "write a consistent copy of the database (safe while serving)"),
    "learn": ("learning.learner", "cmd_learn", "run one learning cycle in the foreground"),
    "adapters": ("learning.versions", "cmd_adapters", "list, show, promote, roll back or prune adapter versions"),
    "config": ("assistant.configure", "cmd_config", "show or change the stored settings: generation defaults, "
               "learning schedule, gate thresholds"),
    "import": ("assistant.importer", "cmd_import", "log TRL SFT/preference JSONL or an Open WebUI feedback "
               "export as feedback"),
}


def version_arg(text: str) -> int:
    """argparse type of a version number: ASCII digits only (store.adapters.parse_version)."""
    from store.adapters import parse_version

    try:
        return parse_version(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="assistant", description="A personal chat assistant that learns from you.")
    p.add_argument("--model", help="'embedded' (default), a Hugging Face model id or a local directory")
    p.add_argument("--home", help="state directory (default: $ASSISTANT_HOME or ~/.assistant)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help=COMMANDS["serve"][2])
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7860)
    s = sub.add_parser("chat", help=COMMANDS["chat"][2])
    s.add_argument("--no-recall", action="store_true", help="answer from the weights alone")
    s.add_argument("--max-new-tokens", type=int, help="longest reply in tokens (default: the config's)")
    s = sub.add_parser("logs", help=COMMANDS["logs"][2])
    s.add_argument("-n", type=int, default=20, help="how many turns and feedback items")
    s = sub.add_parser("export", help=COMMANDS["export"][2])
    s.add_argument("out_dir", help="directory for sft.jsonl, preference.jsonl, unpaired.jsonl")
    s.add_argument("--keep-pii", action="store_true",
                   help="keep e-mail addresses, phone and card numbers (scrubbed by default)")
    s = sub.add_parser("backup", help=COMMANDS["backup"][2])
    s.add_argument("path", help="where to write the copy")
    s = sub.add_parser("learn", help=COMMANDS["learn"][2])
    s.add_argument("--force", action="store_true", help="learn even if little new feedback arrived")
    s = sub.add_parser("adapters", help=COMMANDS["adapters"][2])
    a = s.add_subparsers(dest="action", required=True)
    a.add_parser("list")
    for name in ("show", "promote"):
        x = a.add_parser(name)
        x.add_argument("version", type=version_arg)
        if name == "promote":
            x.add_argument("--yes", action="store_true",
                           help="confirm promoting a version that has not passed the gate")
    x = a.add_parser("rollback")
    x.add_argument("version", type=version_arg, nargs="?", help="default: the parent of the active version")
    x.add_argument("--quarantine", action="store_true",
                   help="also keep the feedback that trained the rolled-back version out of learning")
    x = a.add_parser("prune", help="delete the weights of old versions (their records stay)")
    x.add_argument("--keep", type=int, help="newest versions that keep their weights (default: the learn "
                   "config's keep_versions); the active one and its parent always do")
    s = sub.add_parser("config", help=COMMANDS["config"][2])
    a = s.add_subparsers(dest="action", required=True)
    a.add_parser("show").add_argument("--all", action="store_true", help="every learning setting, not only "
                                      "the schedule")
    x = a.add_parser("set", help="e.g. `config set learn.min_new_feedback 5`, `config set gate.canary_tolerance 0`")
    x.add_argument("key", help="section.field (chat, learn, gate), or a field name only one section has")
    x.add_argument("value", help="a number, true/false, or none")
    s = sub.add_parser("import", help=COMMANDS["import"][2])
    s.add_argument("file", help="a .jsonl of TRL conversational SFT or preference rows, or an Open WebUI "
                   "feedback export (.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    cfg = Config()
    if args.home:
        from pathlib import Path

        cfg.home = Path(args.home).expanduser()
    if args.model:
        cfg.model = args.model
    if cfg.db_path.exists():  # the stored generation defaults; a command's own flags still win
        from assistant.configure import apply_chat_settings
        from store import open_db

        apply_chat_settings(open_db(cfg.db_path), cfg)
    module, func, _ = COMMANDS[args.command]
    return int(getattr(importlib.import_module(module), func)(cfg, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
