#!/usr/bin/env bash
# Installs (from Debian's packages) and starts what the worker and its tests
# need, idempotently: RabbitMQ with its management plugin, and PostgreSQL with
# a role and test database of our own; and, installed but never started, the
# tools the tests run themselves: Prometheus (`prometheus`, `promtool`),
# docker-compose, and stunnel4 (the TLS tests' amqps:// listener; they make
# their certificates with the `openssl` CLI). Sourced by scripts/test and scripts/demo.
#   ONBOARDING_SERVICES="rabbitmq"                  only RabbitMQ (the demo)
#   ONBOARDING_SERVICES="rabbitmq postgres tools"   all of them (default)
set -euo pipefail

services=${ONBOARDING_SERVICES:-rabbitmq postgres tools}
say() { printf '== %s\n' "$*" >&2; }

wait_port() { # host port seconds
    for _ in $(seq 1 "$3"); do
        if (echo >"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
        sleep 1
    done
    echo "port $1:$2 did not open within $3 s" >&2
    return 1
}

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
case " $services " in *" rabbitmq "*) command -v rabbitmq-server >/dev/null 2>&1 || need_apt+=(rabbitmq-server) ;; esac
case " $services " in *" postgres "*) command -v pg_ctlcluster >/dev/null 2>&1 || need_apt+=(postgresql) ;; esac
need_tools=()
case " $services " in *" tools "*)
    { command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need_tools+=(prometheus)
    command -v docker-compose >/dev/null 2>&1 || need_tools+=(docker-compose)
    command -v stunnel4 >/dev/null 2>&1 || need_tools+=(stunnel4)
    command -v openssl >/dev/null 2>&1 || need_tools+=(openssl)
;; esac
if [ ${#need_apt[@]} -gt 0 ] || [ ${#need_tools[@]} -gt 0 ]; then
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get update -qq
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing ${need_apt[*]} from Debian's packages"
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ ${#need_tools[@]} -gt 0 ]; then
    # Install only: Debian's prometheus package starts its service on install
    # unless a policy-rc.d refuses (exit 101); lay one down for the install if
    # there is none. The tests start their own Prometheus.
    say "installing ${need_tools[*]} from Debian's packages (not started)"
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | sudo_if_needed tee "$policy" >/dev/null
        sudo_if_needed chmod +x "$policy"
        own_policy=1
    fi
    rc=0
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_tools[@]}" >/dev/null || rc=$?
    if [ "$own_policy" = 1 ]; then sudo_if_needed rm -f "$policy"; fi
    [ "$rc" = 0 ] || exit "$rc"
fi

case " $services " in *" rabbitmq "*)
    # Management statistics every 500 ms: tests read queue depths and connections there.
    conf=/etc/rabbitmq/rabbitmq.conf
    restart=0
    if ! grep -qs '^collect_statistics_interval = 500' "$conf"; then
        sudo_if_needed mkdir -p /etc/rabbitmq
        echo 'collect_statistics_interval = 500' | sudo_if_needed tee -a "$conf" >/dev/null
        restart=1
    fi
    sudo_if_needed rabbitmq-plugins --offline enable rabbitmq_management >/dev/null
    if sudo_if_needed rabbitmqctl -q status >/dev/null 2>&1; then
        if [ "$restart" = 1 ]; then
            say "restarting RabbitMQ for its new configuration"
            sudo_if_needed rabbitmqctl -q stop >/dev/null 2>&1 || true
            sleep 2
            sudo_if_needed rabbitmq-server -detached
        fi
    else
        say "starting RabbitMQ"
        sudo_if_needed rabbitmq-server -detached
    fi
    wait_port 127.0.0.1 5672 120
    wait_port 127.0.0.1 15672 120
    sudo_if_needed rabbitmqctl -q await_startup >/dev/null
    say "RabbitMQ is up on 5672 (management on 15672)"
;; esac

case " $services " in *" postgres "*)
    pg_ver=$(ls /etc/postgresql | sort -n | tail -1)
    sudo_if_needed pg_ctlcluster --skip-systemctl-redirect "$pg_ver" main start 2>/dev/null || true
    wait_port 127.0.0.1 5432 60
    sudo_if_needed su postgres -c "psql -q -v ON_ERROR_STOP=1" <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'onboarding') THEN
    CREATE ROLE onboarding LOGIN PASSWORD 'onboarding' CREATEDB;
  END IF;
END $$;
SQL
    sudo_if_needed su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname = 'onboarding_test'\"" | grep -q 1 ||
        sudo_if_needed su postgres -c "createdb -O onboarding onboarding_test"
    say "PostgreSQL $pg_ver is up on 5432 (role onboarding, database onboarding_test)"
;; esac
