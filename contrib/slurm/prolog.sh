#!/bin/bash
# WattLedger Slurm Prolog: registers the job and its GPUs with the WattLedger API
# (POST /v1/jobs, source "slurm", external_id = SLURM_JOB_ID) and keeps the WattLedger job id
# in $WATTLEDGER_SLURM_STATE_DIR/<job id> for the Epilog (epilog.sh, which sources this file
# for its functions: install both in the same directory).
#
# slurmd runs it as root on each node of the job, with only Slurm's variables set (no PATH):
# settings come from /etc/wattledger/slurm.env (WATTLEDGER_SLURM_CONFIG names another file),
# lines of NAME=value; a variable already in the environment wins. See README.md.
#
# Accounting must never cost a job its node: whatever happens, this script exits 0, and it
# says what went wrong on stderr and to syslog (tag wattledger-slurm).

wl_load_config() {
    local file=${WATTLEDGER_SLURM_CONFIG:-/etc/wattledger/slurm.env} line name value
    [[ -r $file ]] || return 0
    while IFS= read -r line || [[ -n $line ]]; do
        [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?(WATTLEDGER_[A-Z0-9_]+)=(.*)$ ]] || continue
        name=${BASH_REMATCH[2]} value=${BASH_REMATCH[3]}
        [[ -n ${!name+set} ]] && continue  # the environment wins
        if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
            value=${BASH_REMATCH[1]}
        fi
        export "$name=$value"  # read, never executed: the file holds values, not code
    done <"$file"
}

wl_init() {
    export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}
    export LC_ALL=C
    wl_load_config
    : "${WATTLEDGER_SLURM_STATE_DIR:=/run/wattledger/slurm}"
    : "${WATTLEDGER_CONNECT_TIMEOUT_S:=2}"
    : "${WATTLEDGER_HTTP_TIMEOUT_S:=5}"
    : "${WATTLEDGER_HTTP_RETRIES:=1}"
    : "${WATTLEDGER_GPU_UUIDS_CMD:=nvidia-smi --query-gpu=uuid --format=csv,noheader -i}"
    : "${WATTLEDGER_GPU_CMD_TIMEOUT_S:=10}"
    : "${WATTLEDGER_SLURM_SYSLOG:=1}"
    WL_JOB=${SLURM_JOB_ID:-${SLURM_JOBID:-}}
    if [[ ! $WL_JOB =~ ^[0-9]+$ ]]; then
        wl_log warning "no valid SLURM_JOB_ID ('$WL_JOB'); nothing to do"
        return 1
    fi
    if [[ -z ${WATTLEDGER_API_URL:-} ]]; then
        wl_log warning "WATTLEDGER_API_URL is not set" \
            "(${WATTLEDGER_SLURM_CONFIG:-/etc/wattledger/slurm.env}); job not accounted"
        return 1
    fi
    WL_API=${WATTLEDGER_API_URL%/}
    WL_STATE=$WATTLEDGER_SLURM_STATE_DIR/$WL_JOB
    wl_read_key
}

wl_read_key() {  # WATTLEDGER_API_KEY, else the first line of WATTLEDGER_API_KEY_FILE (root-only, 0600)
    local file=${WATTLEDGER_API_KEY_FILE:-/etc/wattledger/agent.key}
    [[ -n ${WATTLEDGER_API_KEY:-} ]] && return 0
    if [[ -r $file ]]; then
        IFS= read -r WATTLEDGER_API_KEY <"$file" || true
    elif [[ -n ${WATTLEDGER_API_KEY_FILE:-} ]]; then
        wl_log warning "cannot read the API key file $file; calling the API without a key"
    fi
}

wl_log() {  # wl_log <syslog level> <message>
    local level=$1
    shift
    printf 'wattledger-slurm %s job %s: %s\n' "${WL_CONTEXT:-prolog}" "${WL_JOB:-?}" "$*" >&2
    if [[ ${WATTLEDGER_SLURM_SYSLOG:-1} == 1 ]] && command -v logger >/dev/null 2>&1; then
        timeout 2 logger -t wattledger-slurm -p "daemon.$level" -- \
            "${WL_CONTEXT:-prolog} job ${WL_JOB:-?}: $*" >/dev/null 2>&1 || true
    fi
}

wl_json_str() {  # a JSON string; the text is the user's (a job comment), so escape it all
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    s=${s//$'\t'/\\t}
    s=${s//[$'\001'-$'\037']/}
    printf '"%s"' "$s"
}

wl_trim() {
    local s=$1
    s=${s#"${s%%[![:space:]]*}"}
    printf '%s' "${s%"${s##*[![:space:]]}"}"
}

wl_http() {  # wl_http METHOD PATH [JSON BODY]: sets WL_STATUS and WL_BODY; 1 when no answer came
    local method=$1 path=$2 body=${3-} out rc key
    local -a args=(-s -X "$method" --connect-timeout "$WATTLEDGER_CONNECT_TIMEOUT_S"
        --max-time "$WATTLEDGER_HTTP_TIMEOUT_S" --retry "$WATTLEDGER_HTTP_RETRIES" --retry-delay 1
        -H 'Accept: application/json' -w '\n%{http_code}')
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
    if [[ -n ${WATTLEDGER_API_KEY:-} ]]; then
        # the key goes through stdin, not the command line, where ps would show it
        key=${WATTLEDGER_API_KEY//[$'\r\n']/}
        key=${key//\\/\\\\}
        out=$(curl "${args[@]}" -K - "$WL_API$path" <<<"header = \"Authorization: Bearer ${key//\"/\\\"}\"")
    else
        out=$(curl "${args[@]}" "$WL_API$path" </dev/null)
    fi
    rc=$?
    WL_STATUS=${out##*$'\n'} WL_BODY=${out%$'\n'*}
    if ((rc != 0)); then
        case $rc in
            6) WL_ERROR="cannot resolve the host of $WL_API" ;;
            7) WL_ERROR="cannot connect to $WL_API" ;;
            28) WL_ERROR="no answer from $WL_API within ${WATTLEDGER_HTTP_TIMEOUT_S}s" ;;
            *) WL_ERROR="curl failed with exit code $rc on $method $WL_API$path" ;;
        esac
        return 1
    fi
}

wl_iso_now() {
    date -u +%Y-%m-%dT%H:%M:%S.%6NZ
}

wl_started_at() {  # the job's start as slurmctld recorded it (recent Slurm sets it), else now
    if [[ ${SLURM_JOB_START_TIME:-} =~ ^[1-9][0-9]*$ ]]; then
        date -u -d "@$SLURM_JOB_START_TIME" +%Y-%m-%dT%H:%M:%SZ
    else
        wl_iso_now
    fi
}

# The project: the WCKey (stock slurmd does not export it; a site's own setup may), else the
# comment's project=<x>, else the whole comment. The same rule as the sacct import.
wl_project() {
    local wckey comment
    wckey=$(wl_trim "${SLURM_JOB_WCKEY:-}")
    wckey=${wckey#\*}
    comment=$(wl_trim "${SLURM_JOB_COMMENT:-}")
    if [[ -n $wckey ]]; then
        printf '%s' "${wckey:0:200}"
    elif [[ $comment =~ (^|[[:space:],\;])project=([^[:space:],\;]+) ]]; then
        printf '%s' "${BASH_REMATCH[2]:0:200}"
    else
        printf '%s' "${comment:0:200}"
    fi
}

wl_gpu_ids() {  # the job's GPUs on this node as Slurm names them: "0,1" (or UUIDs)
    local ids=${SLURM_JOB_GPUS:-${CUDA_VISIBLE_DEVICES:-}}
    ids=${ids//[[:space:]]/}
    [[ $ids == NoDevFiles ]] && ids=
    printf '%s' "$ids"
}

wl_gpu_uuids() {  # wl_gpu_uuids IDS: their UUIDs, one a line; 1 on failure
    local ids=$1 out rc line bad=
    local -a cmd
    if [[ $ids =~ ^((GPU|MIG)-[A-Za-z0-9/_.-]+,?)+$ ]]; then
        out=${ids//,/$'\n'}  # UUIDs already (MIG instances, some gres.conf setups)
    elif [[ $ids =~ ^[0-9]+(,[0-9]+)*$ ]]; then
        # The command comes from root's config, never from the job: split into words, no eval.
        read -r -a cmd <<<"$WATTLEDGER_GPU_UUIDS_CMD"
        out=$(timeout "$WATTLEDGER_GPU_CMD_TIMEOUT_S" "${cmd[@]}" "$ids" 2>&1)
        rc=$?
        if ((rc != 0)); then
            wl_log warning "'${cmd[*]} $ids' failed (exit $rc): ${out:0:300}"
            return 1
        fi
    else
        wl_log warning "unexpected GPU ids '$ids'"
        return 1
    fi
    while IFS= read -r line; do
        line=$(wl_trim "$line")
        [[ -z $line ]] && continue
        if [[ $line =~ ^[A-Za-z0-9][A-Za-z0-9/_.:-]{0,95}$ ]]; then
            printf '%s\n' "$line"
        else
            bad+=" '${line:0:100}'"
        fi
    done <<<"$out"
    if [[ -n $bad ]]; then
        wl_log warning "not GPU UUIDs from '$WATTLEDGER_GPU_UUIDS_CMD $ids':$bad"
        return 1
    fi
}

wl_remember() {  # keep the WattLedger job id for the epilog
    mkdir -p -m 0755 "$WATTLEDGER_SLURM_STATE_DIR" 2>/dev/null &&
        printf '%s\n' "$1" >"$WL_STATE.tmp" 2>/dev/null && mv -f "$WL_STATE.tmp" "$WL_STATE" ||
        wl_log warning "cannot write $WL_STATE; the epilog will look the job up again"
}

wl_register() {  # wl_register STARTED_AT: sets WL_ID to the WattLedger job id, 1 on failure
    local started=$1 ids uuid list= body project team sep=
    local -a uuids
    WL_ID=
    ids=$(wl_gpu_ids)
    if [[ -z $ids ]]; then
        wl_log info "no GPUs allocated on this node; nothing to register"
        return 1
    fi
    mapfile -t uuids < <(wl_gpu_uuids "$ids" || echo "!failed")
    if ((${#uuids[@]} == 0)) || [[ ${uuids[-1]} == '!failed' ]]; then
        wl_log warning "no UUIDs for GPUs $ids; job not registered"
        return 1
    fi
    for uuid in "${uuids[@]}"; do
        list+=$sep$(wl_json_str "$uuid")
        sep=,
    done
    project=$(wl_project)
    team=$(wl_trim "${SLURM_JOB_ACCOUNT:-}")
    body='{"source":"slurm","external_id":'$(wl_json_str "$WL_JOB")
    body+=',"team":'$(wl_json_str "${team:-unknown}")  # no account: as the sacct import does
    [[ -n $project ]] && body+=',"project":'$(wl_json_str "$project")
    [[ -n ${SLURM_JOB_USER:-} ]] && body+=',"user":'$(wl_json_str "$SLURM_JOB_USER")
    body+=',"gpu_uuids":['$list'],"started_at":'$(wl_json_str "$started")'}'
    if ! wl_http POST /v1/jobs "$body"; then
        wl_log warning "not registered: $WL_ERROR"
        return 1
    fi
    case $WL_STATUS in
        201)
            [[ $WL_BODY =~ [{,]\"id\":([0-9]+) ]] && WL_ID=${BASH_REMATCH[1]}
            wl_log info "registered as WattLedger job $WL_ID with ${#uuids[@]} GPU(s): ${uuids[*]}"
            ;;
        409)  # a retried prolog, or another node of the same job came first
            [[ $WL_BODY =~ \(id\ ([0-9]+)\) ]] && WL_ID=${BASH_REMATCH[1]}
            [[ -n $WL_ID ]] || { wl_log warning "registered already, id unknown: ${WL_BODY:0:300}"; return 1; }
            wl_log info "already registered as WattLedger job $WL_ID"
            wl_check_gpus "${uuids[@]}"
            ;;
        *)
            wl_log warning "not registered: HTTP $WL_STATUS ${WL_BODY:0:500}"
            return 1
            ;;
    esac
    [[ -n $WL_ID ]]
}

wl_check_gpus() {  # after a 409: are this node's GPUs in the job? (a multi-node job's other nodes: no)
    local uuid missing=
    wl_http GET "/v1/jobs/$WL_ID" && [[ $WL_STATUS == 200 ]] || return 0
    for uuid in "$@"; do
        [[ $WL_BODY == *"\"$uuid\""* ]] || missing+=" $uuid"
    done
    [[ -z $missing ]] || wl_log warning "job $WL_ID was registered by another node; this node's GPUs" \
        "are not in it and their energy goes to idle:$missing"
}

wl_prolog_main() {
    WL_CONTEXT=prolog
    wl_init || return 0
    wl_register "$(wl_started_at)" && wl_remember "$WL_ID"
    return 0
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    trap 'exit 0' EXIT  # never fail the job, whatever went wrong above
    wl_prolog_main
fi
