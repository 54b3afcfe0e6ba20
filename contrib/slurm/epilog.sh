#!/bin/bash
# WattLedger Slurm Epilog: finishes the job the prolog registered (POST /v1/jobs/{id}/finish,
# ended_at = now on this node), with the id the prolog kept in $WATTLEDGER_SLURM_STATE_DIR.
#
# No id kept (the API was down when the prolog ran, /run was wiped, or the Prolog never ran on
# this node because no step did): the job is registered now, with the start slurmctld recorded
# (SLURM_JOB_START_TIME), and finished. The ledger re-attributes the past hours from the raw
# samples. Where the API is down now too, `wattledger import sacct` finishes the job later.
#
# Settings and behaviour as in prolog.sh, whose functions this sources (same directory), and
# like it this script always exits 0: a failing Epilog would drain the node.

WL_HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# shellcheck source=prolog.sh
if ! source "$WL_HERE/prolog.sh"; then
    echo "wattledger-slurm epilog job ${SLURM_JOB_ID:-?}: cannot read $WL_HERE/prolog.sh" >&2
    exit 0
fi

wl_kept_id() {
    local id=
    [[ -r $WL_STATE ]] && read -r id <"$WL_STATE"
    [[ $id =~ ^[0-9]+$ ]] && printf '%s' "$id"
}

wl_finish() {  # wl_finish ID: 0 when the job is finished (by us or before)
    local id=$1
    if ! wl_http POST "/v1/jobs/$id/finish" '{"ended_at":'"$(wl_json_str "$(wl_iso_now)")"'}'; then
        wl_log warning "WattLedger job $id not finished: $WL_ERROR; 'wattledger import sacct' will finish it"
        return 1
    fi
    case $WL_STATUS in
        200) wl_log info "finished WattLedger job $id" ;;
        409) wl_log info "WattLedger job $id was finished already (another node, or an import)" ;;
        404) wl_log warning "WattLedger job $id is gone; nothing to finish" ;;
        *)
            wl_log warning "WattLedger job $id not finished: HTTP $WL_STATUS ${WL_BODY:0:500}"
            return 1
            ;;
    esac
}

wl_epilog_main() {
    WL_CONTEXT=epilog
    wl_init || return 0
    local id
    id=$(wl_kept_id)
    if [[ -z $id ]]; then
        if [[ ! ${SLURM_JOB_START_TIME:-} =~ ^[1-9][0-9]*$ ]]; then
            wl_log info "the prolog kept no job id and SLURM_JOB_START_TIME is not set; nothing to finish"
            return 0
        fi
        wl_register "$(wl_started_at)" || return 0
        id=$WL_ID
    fi
    wl_finish "$id" && rm -f "$WL_STATE"
    return 0
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    trap 'exit 0' EXIT
    wl_epilog_main
fi
