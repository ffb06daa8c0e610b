. app/shop.sh
if total durian 1 2>/dev/null; then echo "durian has a price"; exit 1; fi
exit 0
