echo {x}; printf "%s" "{x}" '{x}' $'{x}'
cat <<EOF
{x}
EOF
(( n = {x|int} + 1 )); a[{x|int}]=1; bash -c 'echo "$1"' _ {x}
