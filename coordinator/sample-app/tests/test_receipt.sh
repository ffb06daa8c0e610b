. app/shop.sh
got=$(receipt melon 2)
[ "$got" = "melon x2  6.00" ] || { echo "receipt line is '$got', expected 'melon x2  6.00'"; exit 1; }
