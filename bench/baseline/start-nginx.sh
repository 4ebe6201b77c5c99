#!/usr/bin/env bash
# Start the nginx baseline in the foreground (Debian's nginx or nginx-light package).
# usage: start-nginx.sh PREFIX_DIR PORT ORIGIN_HOST:PORT BUCKET SLICE CACHE_MAX [WORKERS]
# e.g.   start-nginx.sh /tmp/nginx-bench 8081 127.0.0.1:9000 previews 4m 10g 1
set -euo pipefail
if ! command -v nginx >/dev/null; then
  echo "start-nginx: nginx is not installed (Debian: apt-get install nginx-light)" >&2
  exit 2
fi
prefix=$1 port=$2 origin=$3 bucket=$4 slice=$5 cache_max=$6 workers=${7:-1}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$prefix/cache" "$prefix/proxy_temp" "$prefix/client_temp"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@PORT@|$port|g" -e "s|@ORIGIN@|$origin|g" -e "s|@USER@|$(id -un)|g" \
    -e "s|@BUCKET@|$bucket|g" -e "s|@SLICE@|$slice|g" -e "s|@CACHE_MAX@|$cache_max|g" \
    -e "s|@WORKERS@|$workers|g" \
    "$here/nginx.conf.template" > "$prefix/nginx.conf"
exec nginx -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log"
