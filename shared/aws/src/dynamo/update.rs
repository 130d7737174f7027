//! A small builder for conditional `UpdateItem` requests: `SET`, `REMOVE`, list appends and
//! equality conditions, with every attribute name behind a `#placeholder` (several of ours,
//! such as `status`, are reserved words) and every value behind a `:placeholder`.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity, ReturnValue};

use super::DynamoStore;
use super::item::{Item, key};
use super::keys;
use crate::error::AwsError;

/// How a conditional update ended.
#[derive(Debug)]
pub enum Updated {
    /// Written; the item as it is now (when asked for).
    Applied(Option<Item>),
    /// The condition did not hold; nothing was written.
    ConditionFailed,
}

/// An update expression under construction.
#[derive(Debug, Default)]
pub struct Update {
    set: Vec<String>,
    remove: Vec<String>,
    conditions: Vec<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Update {
    /// An empty update.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn name(&mut self, attr: &str) -> String {
        let placeholder = format!("#{attr}");
        self.names.insert(placeholder.clone(), attr.to_owned());
        placeholder
    }

    fn value(&mut self, prefix: &str, attr: &str, v: AttributeValue) -> String {
        let placeholder = format!(":{prefix}_{attr}");
        self.values.insert(placeholder.clone(), v);
        placeholder
    }

    /// `SET attr = value`.
    #[must_use]
    pub fn set(mut self, attr: &str, v: AttributeValue) -> Self {
        let (n, v) = (self.name(attr), self.value("v", attr, v));
        self.set.push(format!("{n} = {v}"));
        self
    }

    /// `SET attr = value` when `v` is `Some`, else `REMOVE attr`.
    #[must_use]
    pub fn set_or_remove(self, attr: &str, v: Option<AttributeValue>) -> Self {
        match v {
            Some(v) => self.set(attr, v),
            None => self.remove(attr),
        }
    }

    /// `SET attr = if_not_exists(attr, value)`: keep a value already there.
    #[must_use]
    pub fn set_if_absent(mut self, attr: &str, v: AttributeValue) -> Self {
        let (n, v) = (self.name(attr), self.value("v", attr, v));
        self.set.push(format!("{n} = if_not_exists({n}, {v})"));
        self
    }

    /// `SET attr = list_append(attr, values)` (creating the list if needed); nothing if empty.
    #[must_use]
    pub fn append(mut self, attr: &str, values: Vec<AttributeValue>) -> Self {
        if values.is_empty() {
            return self;
        }
        let n = self.name(attr);
        let v = self.value("v", attr, AttributeValue::L(values));
        let empty = self.value("empty", attr, AttributeValue::L(Vec::new()));
        self.set.push(format!("{n} = list_append(if_not_exists({n}, {empty}), {v})"));
        self
    }

    /// `REMOVE attr`.
    #[must_use]
    pub fn remove(mut self, attr: &str) -> Self {
        let n = self.name(attr);
        self.remove.push(n);
        self
    }

    /// Condition: `attr = value`.
    #[must_use]
    pub fn expect(mut self, attr: &str, v: AttributeValue) -> Self {
        let (n, v) = (self.name(attr), self.value("c", attr, v));
        self.conditions.push(format!("{n} = {v}"));
        self
    }

    /// Condition: the item has no `attr`.
    #[must_use]
    pub fn expect_absent(mut self, attr: &str) -> Self {
        let n = self.name(attr);
        self.conditions.push(format!("attribute_not_exists({n})"));
        self
    }

    /// Condition: the item exists.
    #[must_use]
    pub fn expect_item(mut self) -> Self {
        let n = self.name(keys::PK);
        self.conditions.push(format!("attribute_exists({n})"));
        self
    }

    fn expression(&self) -> String {
        let mut parts = Vec::new();
        if !self.set.is_empty() {
            parts.push(format!("SET {}", self.set.join(", ")));
        }
        if !self.remove.is_empty() {
            parts.push(format!("REMOVE {}", self.remove.join(", ")));
        }
        parts.join(" ")
    }

    /// Send it to the item `pk/sk` of the store's table; `return_new` asks for the item as
    /// written.
    pub async fn send(
        self,
        store: &DynamoStore,
        (pk, sk): (String, &str),
        return_new: bool,
    ) -> Result<Updated, AwsError> {
        let condition = (!self.conditions.is_empty()).then(|| self.conditions.join(" AND "));
        let request = store
            .client
            .update_item()
            .table_name(store.table())
            .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
            .set_key(Some(key(pk, sk)))
            .update_expression(self.expression())
            .set_condition_expression(condition)
            .set_expression_attribute_names(Some(self.names))
            .set_expression_attribute_values((!self.values.is_empty()).then_some(self.values))
            .return_values(if return_new { ReturnValue::AllNew } else { ReturnValue::None });
        match request.send().await {
            Ok(out) => {
                store.meter.record(out.consumed_capacity());
                Ok(Updated::Applied(out.attributes))
            }
            Err(e) if is_condition_failure(e.as_service_error()) => {
                store.meter.rejected();
                Ok(Updated::ConditionFailed)
            }
            Err(e) => Err(AwsError::dynamo("UpdateItem", e)),
        }
    }
}

fn is_condition_failure(e: Option<&UpdateItemError>) -> bool {
    e.is_some_and(UpdateItemError::is_conditional_check_failed_exception)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_set_remove_and_conditions() {
        let u = Update::new()
            .set("status", AttributeValue::S("running".into()))
            .set_if_absent("startedAt", AttributeValue::N("1".into()))
            .append("trail", vec![AttributeValue::S("x".into())])
            .remove("leaseOwner")
            .expect("epoch", AttributeValue::N("3".into()));
        assert_eq!(
            u.expression(),
            "SET #status = :v_status, #startedAt = if_not_exists(#startedAt, :v_startedAt), \
             #trail = list_append(if_not_exists(#trail, :empty_trail), :v_trail) REMOVE #leaseOwner"
        );
        assert_eq!(u.conditions, ["#epoch = :c_epoch"]);
        assert_eq!(u.names.len(), 5);
    }
}
