. app/shop.sh
got=$(discounted 1000 15)
[ "$got" = 850 ] || { echo "15% off 1000 is $got, expected 850"; exit 1; }
