# fish completion for tokencli: copy it to ~/.config/fish/completions/tokencli.fish.
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
