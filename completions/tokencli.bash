# bash completion for tokencli.
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
