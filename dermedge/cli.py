"""`dermedge`: the pipeline's command line (data, train, evaluate, convert, benchmark, classify)."""

from __future__ import annotations

import importlib

import click

from dermedge import DISCLAIMER, __version__
from dermedge.data.cli import data


class LazyGroup(click.Group):
    """Import a verb's module only when it runs, so `dermedge data` never loads TensorFlow."""

    lazy = {
        "train": ("dermedge.train.cli", "train"),
        "evaluate": ("dermedge.train.cli", "evaluate"),
        "convert": ("dermedge.convert.cli", "convert"),
        "benchmark": ("dermedge.benchmark", "benchmark"),
        "classify": ("dermedge.edge.cli", "main"),
        "card": ("dermedge.convert.card_cli", "card"),
        "calibrate": ("dermedge.edge.calibrate", "calibrate"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The built-in commands and the lazy verbs, sorted, without importing any of them."""
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """Command `name`, a lazy verb's module imported now; a stand-in saying why if it fails."""
        if name in self.lazy:
            module, attr = self.lazy[name]
            try:
                cmd = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                return _unavailable(name, e)
            if name == "classify":
                cmd = click.Command(
                    "classify", params=cmd.params, callback=cmd.callback, help=cmd.help
                )
            return cmd
        return super().get_command(ctx, name)


def _unavailable(name: str, err: Exception) -> click.Command:
    """A stand-in command that fails, saying why the verb is unavailable (and what to install)."""

    @click.command(
        name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
    )
    def cmd() -> None:
        """Fail with the reason the verb cannot run here."""
        hint = (
            " (install the training extra: pip install 'dermedge[train]')"
            if "tensorflow" in str(err)
            else ""
        )
        raise click.ClickException(f"`dermedge {name}` is not available: {err}{hint}")

    cmd.help = f"(unavailable here: {err})"
    return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dermedge")
def main() -> None:
    """Skin-lesion photos to a quantized CNN on a field device.

    \b
    dermedge data inspect ROOT      check a dataset (duplicates, leakage, bad files)
    dermedge data split ROOT        write a leakage-free split manifest
    dermedge train --data RUN       train a Keras model
    dermedge evaluate RUN           metrics and plots on a test split (--external: unseen data)
    dermedge convert RUN            TFLite variants behind an accuracy gate
    dermedge benchmark RUN          latency vs accuracy, with plots
    dermedge classify IMG...        classify photos (same as edge-classify)
    dermedge card MODEL             show a model card; --add-external records an evaluation
    dermedge calibrate MODEL        a site's threshold from its own cases (edge install)
    """


main.add_command(data)
main.epilog = DISCLAIMER


if __name__ == "__main__":
    main()
