"""Every example of Sure Send's create-event page, posted over HTTP through queue and worker."""

import httpx
import pytest

from shared.contract.responses import EventOutcome

WAIT = {"Prefer": "wait=20"}

FORM_OBJECT = {
    "type": "form_submission",
    "person": {
        "firstName": "John",
        "lastName": "Doe",
        "emails": [{"value": "john.doe@example.com", "isPrimary": True}],
        "phones": [{"value": "+1-555-1234", "isPrimary": True}],
    },
    "message": "Contact form submitted",
    "metadata": {"formName": "Contact Us", "interests": ["buying", "3-bedroom"]},
}
FORM_STRINGS = {
    "type": "form_submission",
    "person": {
        "firstName": "John",
        "lastName": "Doe",
        "emails": ["john.strings@example.com", "john.alt@example.com"],
        "phones": ["+1-555-1234", "+1-555-5678"],
    },
    "message": "Contact form submitted",
    "metadata": {"formName": "Contact Us", "interests": ["buying", "3-bedroom"]},
}
B2B = {
    "type": "form_submission",
    "person": {
        "firstName": "Jane",
        "lastName": "Smith",
        "emails": [{"value": "jane.smith@example.com", "isPrimary": True}],
    },
    "company": {
        "name": "Acme Corporation",
        "website": "https://acmecorp.com",
        "industry": "Technology",
        "companySize": "51-200",
    },
    "message": "Demo request submitted",
}


async def post(client: httpx.AsyncClient, body: dict) -> httpx.Response:
    response = await client.post("/api/partner/events", json=body, headers=WAIT)
    assert response.headers.get("Preference-Applied") == "wait=20", response.text
    EventOutcome.model_validate(response.json())  # the documented response schema
    return response


async def test_form_submission_object_format_creates_then_matches(
    client: httpx.AsyncClient,
) -> None:
    first = await post(client, FORM_OBJECT)
    assert first.status_code == 201
    body = first.json()
    assert body["wasPersonCreated"] is True
    assert "company" not in body and "wasCompanyCreated" not in body
    person = body["person"]
    assert (person["firstName"], person["lastName"], person["name"]) == ("John", "Doe", "John Doe")
    assert person["emails"] == [{"value": "john.doe@example.com", "isPrimary": True}]
    # The seed's own invalid number is accepted, normalised to '+' and digits and kept on the
    # person, but unverified: not valid in any region, so never an identity key (nor primary).
    unverified = {"value": "+15551234", "isPrimary": False, "isVerified": False}
    assert person["phones"] == [unverified]
    event = body["event"]
    assert event["eventType"] == "form_submission"
    assert event["personId"] == person["id"]
    assert event["message"] == "Contact form submitted"
    assert event["metadata"] == FORM_OBJECT["metadata"]

    again = await post(client, FORM_OBJECT)
    assert again.status_code == 200
    assert again.json()["wasPersonCreated"] is False
    assert again.json()["person"]["id"] == person["id"]  # matched by the e-mail
    assert again.json()["person"]["phones"] == [unverified]  # and the number kept once


async def test_string_array_format_marks_first_email_and_phone_primary(
    client: httpx.AsyncClient,
) -> None:
    response = await post(client, FORM_STRINGS)
    assert response.status_code == 201
    person = response.json()["person"]
    assert person["emails"] == [
        {"value": "john.strings@example.com", "isPrimary": True},
        {"value": "john.alt@example.com", "isPrimary": False},
    ]
    assert person["phones"] == [
        {"value": "+15551234", "isPrimary": False, "isVerified": False},
        {"value": "+15555678", "isPrimary": False, "isVerified": False},
    ]


async def test_b2b_lead_creates_company_then_matches_it_case_insensitively(
    client: httpx.AsyncClient,
) -> None:
    created = await post(client, B2B)
    assert created.status_code == 201
    body = created.json()
    assert body["wasPersonCreated"] is True and body["wasCompanyCreated"] is True
    company = body["company"]
    assert company["name"] == "Acme Corporation"
    assert (company["website"], company["industry"], company["companySize"]) == (
        "https://acmecorp.com",
        "Technology",
        "51-200",
    )
    assert body["person"]["companyId"] == company["id"]
    assert body["event"]["companyId"] == company["id"]

    renamed = {**B2B, "company": {"name": "  ACME corporation "}}
    matched = await post(client, renamed)
    assert matched.status_code == 200
    assert matched.json()["wasCompanyCreated"] is False
    assert matched.json()["company"]["id"] == company["id"]
    assert matched.json()["person"]["id"] == body["person"]["id"]

    colleague = {**B2B, "person": {"firstName": "Max", "emails": ["max@acmecorp.com"]}}
    hired = await post(client, colleague)
    assert hired.status_code == 201  # a new person, an existing company
    assert (hired.json()["wasPersonCreated"], hired.json()["wasCompanyCreated"]) == (True, False)
    assert hired.json()["person"]["companyId"] == company["id"]


async def test_property_view_matches_the_person_by_email(client: httpx.AsyncClient) -> None:
    await post(client, FORM_OBJECT)
    view = {
        "type": "property_view",
        "person": {"emails": [{"value": "John.Doe@Example.com"}]},
        "property": {
            "id": "prop-123",
            "address": "123 Main St, Portland, OR 97201",
            "price": 500000,
            "beds": 3,
            "baths": 2,
            "sqft": 1800,
        },
    }
    response = await post(client, view)
    assert response.status_code == 200
    assert response.json()["wasPersonCreated"] is False
    assert response.json()["person"]["firstName"] == "John"
    assert response.json()["event"]["property"] == view["property"]


@pytest.mark.parametrize(
    "example",
    [
        {
            "type": "page_view",
            "pageUrl": "https://example.com/properties/123",
            "pageTitle": "Beautiful 3BR Home",
            "pageDuration": 45,
            "pageReferrer": "https://google.com",
        },
        {
            "type": "search",
            "propertySearch": {
                "minPrice": 300000,
                "maxPrice": 500000,
                "beds": 3,
                "location": "Portland, OR",
                "propertyType": "house",
            },
        },
    ],
    ids=["page_view", "search"],
)
async def test_person_id_examples_attach_to_the_existing_person(
    client: httpx.AsyncClient, example: dict
) -> None:
    person_id = (await post(client, FORM_OBJECT)).json()["person"]["id"]
    response = await post(client, {**example, "personId": person_id})
    assert response.status_code == 200
    body = response.json()
    assert body["person"]["id"] == person_id
    assert body["wasPersonCreated"] is False
    for field, value in example.items():
        if field != "type":
            assert body["event"][field] == value
