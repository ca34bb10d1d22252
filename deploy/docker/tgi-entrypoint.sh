#!/bin/sh
# Starts TGI with every adapter of the loraswarm adapter store.
#
# TGI loads LoRA adapters only when it starts (LORA_ADAPTERS=<id>=<folder>,...) and answers an
# unknown adapter_id with the base model, so the list must be complete at start. This lists the
# current version of each adapter under $ADAPTER_STORE (layout: shared/adapter_store.py,
# <tenant>/<name>/current naming <tenant>/<name>/versions/<n>/) as `<tenant>/<name>=<folder>`:
# the adapter ids the specialists send, served stacks (`<tenant>/<name>.stack`) included. A
# LORA_ADAPTERS set by hand is kept as it is.
# Restart TGI to serve adapters published after it started.
set -eu

store="${ADAPTER_STORE:-/adapters}"

if [ -z "${LORA_ADAPTERS:-}" ] && [ -d "$store" ]; then
    found=""
    for current in "$store"/*/*/current; do
        [ -f "$current" ] || continue
        adapter_dir=$(dirname "$current")
        name=$(basename "$adapter_dir")
        tenant=$(basename "$(dirname "$adapter_dir")")
        version=$(tr -d ' \t\r\n' < "$current")
        folder="$adapter_dir/versions/$version"
        if [ ! -f "$folder/adapter_config.json" ] || [ ! -f "$folder/adapter_model.safetensors" ]; then
            echo "tgi-entrypoint: skipping $tenant/$name: $folder lacks adapter_config.json or adapter_model.safetensors" >&2
            continue
        fi
        found="${found:+$found,}$tenant/$name=$folder"
    done
    if [ -n "$found" ]; then
        LORA_ADAPTERS="$found"
        export LORA_ADAPTERS
    fi
fi

echo "tgi-entrypoint: LORA_ADAPTERS=${LORA_ADAPTERS:-(none)}" >&2
exec text-generation-launcher "$@"
