
#compdef tokencli

_tokencli_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _TOKENCLI_COMPLETE=complete_zsh tokencli)
}

compdef _tokencli_completion tokencli

