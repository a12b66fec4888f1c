"""Click options made from the config dataclasses: one option per setting, with the dataclass's
help text and default, so that a setting is declared once (``trainer/config.py``)."""

from __future__ import annotations

from dataclasses import MISSING

import click


def config_options(cls):
    """One click option per setting of the config dataclass ``cls`` (nested ones flattened).

    The help text and the default shown come from the dataclass; every option defaults to None
    here, so that the command can tell what the user gave (on --resume, only that changes).
    """
    from trainer.config import _field_type, flat_fields

    def decorate(fn):
        for key, spec in reversed(list(flat_fields(cls).items())):
            meta = spec.metadata
            if not meta.get("cli", True):
                continue
            flag = meta.get("flag") or "--" + key.split(".")[-1].replace("_", "-")
            flags = (flag,) if isinstance(flag, str) else tuple(flag)
            kind, _ = _field_type(spec)
            default = spec.default if spec.default_factory is MISSING else spec.default_factory()
            help_text = meta["help"]
            if "[default" not in help_text:
                help_text += f"  [default: {'none' if default is None else default}]"
            param = key.replace(".", "__")
            if kind is bool:
                names = flag if "/" in flag else f"{flag}/--no-{flag[2:]}"
                fn = click.option(names, param, default=None, help=help_text)(fn)
                continue
            if meta.get("choices"):
                kind_type = click.Choice([str(c) for c in meta["choices"]])
            else:
                kind_type = {int: click.INT, float: click.FLOAT}.get(kind, click.STRING)
            fn = click.option(*flags, param, type=kind_type, default=None, help=help_text)(fn)
        return fn

    return decorate


def given_settings(options: dict) -> dict:
    """{dotted key: value} of the config options the user gave."""
    return {k.replace("__", "."): v for k, v in options.items() if v is not None}


__all__ = ["config_options", "given_settings"]
