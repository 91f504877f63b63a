"""Reads every row of an entity set through chainkeeper's OData feed with pyodata (pip install 'pyodata>=1.11,<2'),
following the server's `__next` links as pyodata does (it refuses a `__next` on another origin than the service).

Usage: python3 read_feed.py SERVICE_URL ENTITY_SET CREDENTIAL   (CREDENTIAL: api_key | basic | bearer)
The API token comes in the environment variable CK_TOKEN (never on the command line). Prints one JSON line:
{"ids": [...], "pages": n, "next_urls": [...]}.
"""

import json
import os
import sys

import pyodata
import requests
from pyodata.v2.model import Config, PolicyIgnore


class KeyInUrl(requests.auth.AuthBase):
    """Adds `api_key` to every URL, the links chainkeeper wrote included (they never hold it). pyodata sends its
    own query string, which replaces a session's `params`: an auth hook is the way to reach every request."""

    def __init__(self, token):
        self.token = token

    def __call__(self, request):
        request.prepare_url(request.url, {"api_key": self.token})
        return request


def main():
    service_url, entity_set, credential = sys.argv[1], sys.argv[2], sys.argv[3]
    token = os.environ["CK_TOKEN"]
    session = requests.Session()
    if credential == "api_key":
        session.auth = KeyInUrl(token)  # what Power BI's Web API credential does: the key on every URL
    elif credential == "basic":
        session.auth = ("powerbi", token)
    else:
        session.headers["Authorization"] = f"Bearer {token}"
    config = Config(default_error_policy=PolicyIgnore())
    client = pyodata.Client(service_url, session, config=config)
    entities = getattr(client.entity_sets, entity_set)
    ids, pages, next_urls = [], 0, []
    request = entities.get_entities().select("ID,Name")
    while True:
        batch = request.execute()
        pages += 1
        ids.extend(str(e.ID) for e in batch)
        if not batch.next_url:
            break
        next_urls.append(batch.next_url)
        request = entities.get_entities().next_url(batch.next_url)
    print(json.dumps({"ids": ids, "pages": pages, "next_urls": next_urls}))


if __name__ == "__main__":
    main()
