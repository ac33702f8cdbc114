#compdef tokencli
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
