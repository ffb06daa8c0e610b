. app/shop.sh
got=$(total pear 3)
[ "$got" = 165 ] || { echo "3 pears cost $got, expected 165"; exit 1; }
