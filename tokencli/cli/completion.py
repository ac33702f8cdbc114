"""Shell completion that never hands stored text to a shell as code.

Typer's own scripts `eval` what the program prints (zsh), or expand it unquoted (bash),
and typer's zsh format does not escape backslashes: a token label such as
`x\\" <(touch F) \\"`, set by any client of `POST /app/token`, ran `touch F` when an
operator pressed TAB. Ours work the other way round: the program prints data, one
candidate per line (`VALUE`, or `VALUE<TAB>DESCRIPTION`), and the scripts in
`SCRIPTS` read those lines into arrays (`read -r`, `compadd -a`, a fish list) that no
shell parses, expands or globs again. On this side, a value that could not be one
inert word (whitespace, a control character) is dropped, and a description (a label)
is shown literally with every control character escaped, so it cannot end its line.

Typer's completion protocol (`_TOKENCLI_COMPLETE=complete_SHELL`) is kept for
the instruction names only: `complete_lines` answers our scripts; the old
`complete_bash`, `complete_zsh` and `complete_fish` (what typer's scripts, maybe still
installed, ask for, and `eval`) print nothing but a note to install ours; and
`source_bash`, `source_zsh`, `source_fish` print our scripts, as `tokencli completion
SHELL` does.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from typer._click.shell_completion import (
    CompletionItem,
    ShellComplete,
    add_completion_class,
    split_arg_string,
)

from tokencli.cli.base import app
from tokencli.service.views import literal

# The line the shell passes: the command line up to the cursor, as typed.
LINE_VARIABLE = "_TOKENCLI_COMPLETE_LINE"

_BASH = r"""# bash completion for tokencli.
# Source it from ~/.bashrc, or copy it to ~/.local/share/bash-completion/completions/tokencli.
# tokencli prints the candidates as data, one per line (VALUE or VALUE<TAB>DESCRIPTION);
# they are read with `read -r` into COMPREPLY and never evaluated, expanded or globbed.
_tokencli_completion() {
    local candidate word=${COMP_LINE:0:COMP_POINT}
    word=${word##*[[:space:]]}
    COMPREPLY=()
    while IFS= read -r candidate || [[ -n $candidate ]]; do
        [[ -n $candidate ]] && COMPREPLY+=("${candidate%%$'\t'*}")
    done < <(_TOKENCLI_COMPLETE=complete_lines \
        _TOKENCLI_COMPLETE_LINE="${COMP_LINE:0:COMP_POINT}" command tokencli 2>/dev/null)
    # bash splits words at the colons of COMP_WORDBREAKS: for "--scope read:l" it
    # replaces only "l", so drop what precedes the last colon (as bash-completion's
    # __ltrim_colon_completions does).
    if [[ $word == *:* && $COMP_WORDBREAKS == *:* ]]; then
        local prefix=${word%"${word##*:}"} index
        for index in "${!COMPREPLY[@]}"; do
            COMPREPLY[index]=${COMPREPLY[index]#"$prefix"}
        done
    fi
    return 0
}

complete -o default -F _tokencli_completion tokencli
"""

_ZSH = r"""#compdef tokencli
# zsh completion for tokencli: copy it onto $fpath as _tokencli (before compinit runs),
# or source it after compinit.
# tokencli prints the candidates as data, one per line (VALUE or VALUE<TAB>DESCRIPTION);
# they are read with `read -r` into arrays handed to compadd, never evaluated, expanded
# or globbed.
_tokencli() {
    local -a values shown
    local line value
    while IFS= read -r line || [[ -n $line ]]; do
        [[ -n $line ]] || continue
        value=${line%%$'\t'*}
        values+=("$value")
        if [[ $line == *$'\t'* ]]; then
            shown+=("$value  -- ${line#*$'\t'}")
        else
            shown+=("$value")
        fi
    done < <(_TOKENCLI_COMPLETE=complete_lines \
        _TOKENCLI_COMPLETE_LINE="${(j: :)words[1,CURRENT]}" command tokencli 2>/dev/null)
    if (( $#values )); then
        compadd -l -d shown -a values
    else
        _files
    fi
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _tokencli "$@"
else
    compdef _tokencli tokencli
fi
"""

_FISH = r"""# fish completion for tokencli: copy it to ~/.config/fish/completions/tokencli.fish.
# tokencli prints the candidates as data, one per line (VALUE or VALUE<TAB>DESCRIPTION);
# they become a fish list that is never evaluated. With none, files are offered.
function __tokencli_candidates
    set -l line (commandline -cp)
    set -g __tokencli_completions (env _TOKENCLI_COMPLETE=complete_lines \
        _TOKENCLI_COMPLETE_LINE="$line" tokencli 2>/dev/null | string match -v '')
    test (count $__tokencli_completions) -gt 0
end

complete --command tokencli --no-files --condition __tokencli_candidates \
    --arguments '$__tokencli_completions'
"""

SCRIPTS = {"bash": _BASH, "zsh": _ZSH, "fish": _FISH}

_STALE = (
    "tokencli: this {shell} completion script is out of date and unsafe; "
    "install the one `tokencli completion {shell}` prints (README, Shell completion)\n"
)


def candidate_line(item: CompletionItem) -> str | None:
    """One candidate as a line of data, or None when it cannot be one inert word.

    Files (click's `type="file"`) are left to the shell: with no candidates, each
    script completes file names.
    """
    value = str(item.value)
    if item.type != "plain" or not value or not value.isprintable() or " " in value:
        return None
    if not item.help:
        return value
    # literal() escapes every control character (tab and newline included), so the
    # description cannot start a second line or a second field.
    return f"{value}\t{literal(' '.join(str(item.help).split()))}"


class LinesComplete(ShellComplete):
    """`complete_lines`: the candidates as lines of data, for the scripts in SCRIPTS."""

    name = "lines"
    source_template = ""

    def source_vars(self) -> dict[str, Any]:
        """No template: the scripts are written out whole."""
        return {}

    def get_completion_args(self) -> tuple[list[str], str]:
        """The words before the cursor, and the word being completed."""
        line = os.environ.get(LINE_VARIABLE, "")
        words = split_arg_string(line)[1:]
        if words and not line[-1:].isspace():
            return words[:-1], words[-1]
        return words, ""

    def format_completion(self, item: CompletionItem) -> str:
        """The candidate's line ("" for one that is dropped)."""
        return candidate_line(item) or ""

    def complete(self) -> str:
        """Every candidate's line, the dropped ones left out."""
        args, incomplete = self.get_completion_args()
        lines = (candidate_line(item) for item in self.get_completions(args, incomplete))
        return "\n".join(line for line in lines if line is not None)


class _ShellScript(ShellComplete):
    """`source_SHELL` prints our script; `complete_SHELL`, asked by typer's scripts that
    `eval` the answer, gets nothing but a note on stderr."""

    source_template = ""

    def source_vars(self) -> dict[str, Any]:
        """No template: the scripts are written out whole."""
        return {}

    def source(self) -> str:
        """Our script for this shell, without its last newline (echo adds it back)."""
        return SCRIPTS[self.name].rstrip("\n")

    def get_completion_args(self) -> tuple[list[str], str]:
        """Never used: `complete` answers nothing."""
        return [], ""

    def format_completion(self, item: CompletionItem) -> str:
        """Never used: `complete` answers nothing."""
        return ""

    def complete(self) -> str:
        """Nothing a script could evaluate; a note that the script must be replaced."""
        sys.stderr.write(_STALE.format(shell=self.name))
        return ""


class _Bash(_ShellScript):
    name = "bash"


class _Zsh(_ShellScript):
    name = "zsh"


class _Fish(_ShellScript):
    name = "fish"


for _class in (LinesComplete, _Bash, _Zsh, _Fish):
    add_completion_class(_class, _class.name)


@app.command()
def completion(
    shell: Annotated[
        str,
        typer.Argument(
            metavar="SHELL",
            help="bash, zsh or fish.",
            autocompletion=lambda: list(SCRIPTS),
        ),
    ],
) -> None:
    """Print the completion script for a shell, to install as the README says.

    The script asks tokencli for candidates (commands, options, live token IDs with their
    labels, scopes in use) and treats what it gets as data: a label never runs as code.

    \b
    Examples:
      tokencli completion bash > ~/.local/share/bash-completion/completions/tokencli
      tokencli completion zsh > ~/.zfunc/_tokencli
      tokencli completion fish > ~/.config/fish/completions/tokencli.fish
    """
    script = SCRIPTS.get(shell)
    if script is None:
        raise typer.BadParameter(f"{shell[:20]!r}: use bash, zsh or fish", param_hint="SHELL")
    sys.stdout.write(script)
