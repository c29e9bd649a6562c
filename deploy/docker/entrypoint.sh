#!/bin/sh
# Entry point of the lucid image: `python -m server` with the container's arguments.
#
#   <image> [server and engine arguments]   serve; --model, --host and --port default to
#                                           $LUCID_MODEL, 0.0.0.0 and $LUCID_PORT
#   <image> COMMAND [ARGS]                  run another command (hf, python, make, sh, ...)
set -eu

case "${1:-}" in
    "" | -*) ;;
    *) exec "$@" ;;
esac

has_model=false
has_host=false
has_port=false
for arg in "$@"; do
    case "$arg" in
        --model | --model=*) has_model=true ;;
        --host | --host=*) has_host=true ;;
        --port | --port=*) has_port=true ;;
    esac
done

if [ "$has_port" = false ]; then
    set -- --port "${LUCID_PORT:-8000}" "$@"
fi
if [ "$has_host" = false ]; then
    set -- --host 0.0.0.0 "$@"
fi
if [ "$has_model" = false ]; then
    if [ -z "${LUCID_MODEL:-}" ]; then
        echo "entrypoint: no --model given and LUCID_MODEL is empty" >&2
        exit 2
    fi
    set -- --model "$LUCID_MODEL" "$@"
fi

exec python -m server "$@"
