//! Settlement reports over real HTTP: each gateway lists its books for a period in its
//! own format, only that period, and the controls make the books go wrong.

use serde_json::{json, Value};

use crate::support::{ok_json, reference, Receiver, Sim};

fn period() -> String {
    let now = chrono::Utc::now();
    format!(
        "from={}&to={}",
        (now - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ")
    )
}

#[tokio::test]
async fn the_json_list_lists_each_charge_of_the_period_with_its_fee_and_a_duplicate_charge_twice() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let clean = reference();
    ok_json(sim.json_pay(&clean, "10.00", &receiver.url)).await;
    let control =
        json!({"gateways": {"json": {"duplicate_charge": true, "settle_amount_delta": "0.50"}}});
    let put = sim
        .http
        .put(sim.url("/control"))
        .json(&control)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let twice = reference();
    ok_json(sim.json_pay(&twice, "20.00", &receiver.url)).await;

    let lines: Vec<Value> = sim
        .get_json(&format!("/json/settlements?{}", period()))
        .await
        .as_array()
        .unwrap()
        .clone();
    let of = |r: &str| {
        lines
            .iter()
            .filter(|l| l["reference"] == r)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(of(&clean).len(), 1);
    assert_eq!(of(&clean)[0]["amount"], "10.00");
    assert_eq!(of(&clean)[0]["fee"], "0.20");
    assert_eq!(of(&clean)[0]["status"], "settled");
    assert_eq!(of(&twice).len(), 2, "booked twice");
    assert_eq!(
        of(&twice)[0]["amount"],
        "20.50",
        "settled at the amount plus the delta"
    );

    let past = sim
        .get_json("/json/settlements?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z")
        .await;
    assert_eq!(past, json!([]), "only the period's books");
}

#[tokio::test]
async fn the_card_acquirer_lists_its_books_as_csv_and_the_soap_gateway_as_a_soap_report() {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let charge = reference();
    ok_json(sim.card_charge(&charge, "50.00", "4242424242424242", &receiver.url)).await;
    let csv = sim
        .get(&format!("/card/settlements.csv?{}", period()))
        .await
        .text()
        .await
        .unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("reference,operation,payment_reference,amount,currency,fee,status,settled_at")
    );
    let line = lines.next().unwrap();
    assert!(
        line.starts_with(&format!("{charge},charge,,50.00,EUR,1.00,settled,")),
        "{line}"
    );

    let now = chrono::Utc::now();
    let envelope = format!(
        r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:pay="urn:paygate:sim:payments"><soap:Body><pay:SettlementReport><pay:From>{}</pay:From><pay:To>{}</pay:To></pay:SettlementReport></soap:Body></soap:Envelope>"#,
        (now - chrono::Duration::hours(1)).to_rfc3339(),
        (now + chrono::Duration::hours(1)).to_rfc3339()
    );
    let report = sim
        .http
        .post(sim.url("/soap/reports"))
        .body(envelope)
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), 200);
    let body = report.text().await.unwrap();
    assert!(body.contains("SettlementReportResponse"), "{body}");
    assert!(
        !body.contains("<pay:Item>"),
        "nothing charged at the SOAP gateway: {body}"
    );
    let refused = sim
        .http
        .post(sim.url("/soap/reports"))
        .body("<x/>")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 500, "a fault");
}

#[tokio::test]
async fn a_lost_answer_declines_to_paygate_but_the_books_say_charged_and_an_unsolicited_charge_is_booked(
) {
    let sim = Sim::start().await;
    let receiver = Receiver::start().await;
    let put = sim
        .http
        .put(sim.url("/control"))
        .json(&json!({"gateways": {"json": {"lost_answer": true}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let lost = reference();
    let answer = sim
        .json_pay(&lost, "11.00", &receiver.url)
        .send()
        .await
        .unwrap();
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["status"], "declined");
    assert_eq!(
        sim.charges(&lost).await["charges"],
        1,
        "charged all the same"
    );

    let ghost = reference();
    let booked = sim
        .http
        .post(sim.url("/control/charges"))
        .json(&json!({"gateway": "json", "reference": ghost, "amount": "9.99", "currency": "USD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(booked.status(), 201);
    let again = sim
        .http
        .post(sim.url("/control/charges"))
        .json(&json!({"gateway": "json", "reference": ghost, "amount": "9.99", "currency": "USD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let lines = sim
        .get_json(&format!("/json/settlements?{}", period()))
        .await;
    let statuses: Vec<(String, String)> = lines
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["reference"].as_str().unwrap().to_owned(),
                l["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        statuses.contains(&(lost.clone(), "settled".to_owned())),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&(ghost.clone(), "settled".to_owned())),
        "{statuses:?}"
    );
}
