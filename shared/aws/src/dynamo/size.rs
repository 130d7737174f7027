//! Item size and write cost as DynamoDB bills them, so the write budget of `docs/aws-dynamodb.md`
//! is measured on the items the store really writes (the emulators do not bill).
//!
//! Rules (DynamoDB developer guide, "Item sizes and formats"): attribute names count as their
//! UTF-8 length; strings and binaries their length; a number about one byte per two significant
//! digits plus one; booleans and nulls one byte; a list or map 3 bytes plus 1 per element plus
//! the elements. A write costs one WCU per started KB of the item (an update: of the larger of
//! the item before and after).

use aws_sdk_dynamodb::types::AttributeValue;

use super::item::Item;

/// The billed size of an item, in bytes.
#[must_use]
pub fn item_size(item: &Item) -> usize {
    item.iter().map(|(name, v)| name.len() + value_size(v)).sum()
}

/// Write capacity units of a write of an item of `bytes` bytes.
#[must_use]
pub fn write_units(bytes: usize) -> usize {
    bytes.div_ceil(1024).max(1)
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => number_size(n),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(set) => set.iter().map(String::len).sum(),
        AttributeValue::Ns(set) => set.iter().map(|n| number_size(n)).sum(),
        AttributeValue::Bs(set) => set.iter().map(|b| b.as_ref().len()).sum(),
        AttributeValue::L(list) => 3 + list.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AttributeValue::M(map) => 3 + map.iter().map(|(k, v)| 1 + k.len() + value_size(v)).sum::<usize>(),
        _ => 0,
    }
}

fn number_size(n: &str) -> usize {
    let digits = n.trim_start_matches('-').chars().filter(char::is_ascii_digit).skip_while(|c| *c == '0').count();
    digits.div_ceil(2) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_billing_rules() {
        let item = Item::from([
            ("pk".to_owned(), AttributeValue::S("TASK#t1".into())),
            ("epoch".to_owned(), AttributeValue::N("1700000000000".into())),
            ("l".to_owned(), AttributeValue::L(vec![AttributeValue::Bool(true)])),
        ]);
        assert_eq!(item_size(&item), (2 + 7) + (5 + 8) + (1 + 3 + 1 + 1));
        assert_eq!((write_units(0), write_units(1024), write_units(1025)), (1, 1, 2));
    }
}
