"""Many clients at once: writers, readers and deleters in threads; afterwards every count is exact and no
query ever saw a torn or dangling result."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

WRITERS, POSTS_PER_WRITER, FILES_PER_POST = 4, 5, 3


def test_concurrent_enrolment_queries_and_deletes(client: TestClient, crop, enrol):
    doomed = enrol(client, [(90, 0), (90, 1), (91, 0)])
    query = crop(7)

    def write(writer: int) -> list[int]:
        ids = []
        for post in range(POSTS_PER_WRITER):
            person = f"w{writer}"
            files = [("files", (f"{i}.png", crop(writer, post * 10 + i + 1))) for i in range(FILES_PER_POST)]
            response = client.post("/gallery", files=files, data={"person_id": [person] * FILES_PER_POST})
            assert response.status_code == 201, response.text
            ids += [e["entry_id"] for e in response.json()["entries"]]
        return ids

    def read(_: int) -> list[dict]:
        seen = []
        for _ in range(POSTS_PER_WRITER):
            response = client.post("/query", files={"file": ("q.png", query)}, params={"k": 100})
            assert response.status_code == 200, response.text
            seen += response.json()["matches"]
        return seen

    with ThreadPoolExecutor(max_workers=2 * WRITERS + 2) as pool:
        writes = [pool.submit(write, w) for w in range(WRITERS)]
        reads = [pool.submit(read, r) for r in range(WRITERS)]
        deletes = [pool.submit(client.delete, "/gallery/persons/p90"),
                   pool.submit(client.delete, f"/gallery/entries/{doomed[2]['entry_id']}")]
        labels = {entry_id: f"w{w}" for w, future in enumerate(writes) for entry_id in future.result()}
        matches = [match for future in reads for match in future.result()]
        assert [future.result().status_code for future in deletes] == [200, 200]

    total = WRITERS * POSTS_PER_WRITER * FILES_PER_POST
    assert len(labels) == total
    assert client.get("/gallery").json() == {"entries": total, "persons": WRITERS}
    # Every match a reader saw was a whole entry: an id with its own label, never a half-removed one.
    labels |= {e["entry_id"]: e["person_id"] for e in doomed}
    assert all(match["person_id"] == labels[match["entry_id"]] for match in matches)
    final = client.post("/query", files={"file": ("q.png", query)}, params={"k": 1000}).json()["matches"]
    assert sorted(m["entry_id"] for m in final) == sorted(i for i, p in labels.items() if p.startswith("w"))
