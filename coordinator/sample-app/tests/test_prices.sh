. app/shop.sh
[ "$(price_of apple)" = 40 ] || { echo "apple costs $(price_of apple), expected 40"; exit 1; }
[ "$(price_of melon)" = 300 ] || { echo "melon costs $(price_of melon), expected 300"; exit 1; }
