# The sample shop's pricing, in plain sh so it runs anywhere git does.

# price_of ITEM: the unit price in cents.
price_of() {
  case "$1" in
    apple) echo 40 ;;
    pear) echo 55 ;;
    melon) echo 300 ;;
    *) echo "unknown item: $1" >&2; return 1 ;;
  esac
}

# total ITEM COUNT: price of COUNT items, in cents.
total() {
  unit=$(price_of "$1") || return 1
  echo $((unit * $2))
}

# discounted CENTS PERCENT: the price after a discount, rounded down.
discounted() {
  echo $(($1 * (100 - $2) / 100))
}

# receipt ITEM COUNT: a line for the receipt.
receipt() {
  cents=$(total "$1" "$2") || return 1
  printf '%s x%s  %d.%02d\n' "$1" "$2" $((cents / 100)) $((cents % 100))
}
