"""Label Studio's SDK at work, run by the interpreter of Label Studio's own environment
(``.venv-label-studio/bin/python``), whose pins (the SDK's opencv wants a numpy the project's torch stack
does not take) are not the project's: :class:`~malaria_pipeline.framework.label_studio.LabelStudioProjectDataset`
starts it, hands it a request as JSON on its standard input, and reads the answer as JSON on its standard
output. It imports the standard library and the SDK only, never the project.

The server and token come from the environment (``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``), never from
the command line. Commands:

- ``import``: ``{"title", "label_config", "description", "tasks"}`` → the project is made with that
  labelling interface if there is none of that title (an existing one is given it); the tasks whose ``data.task_key`` it does not hold
  yet are imported (with their predictions) → ``{"project_id", "imported", "held"}``;
- ``export``: ``{"title"}`` → ``{"project_id", "tasks": [{"id", "data", "annotations"}], "users": {id: email}}``,
  the images of the tasks' cells left out (``project_id`` null: no such project).

A failure is one JSON object ``{"error": "unreachable" | "unauthorized" | "api", "detail": …}`` and exit
status 2.
"""

import json
import os
import sys

TASK_FIELDS = "all"


def _client():
    from label_studio_sdk import LabelStudio

    return LabelStudio(
        base_url=os.environ["LABEL_STUDIO_URL"],
        api_key=os.environ["LABEL_STUDIO_API_KEY"],
        timeout=float(os.environ.get("LABEL_STUDIO_TIMEOUT", "30")),
    )


def _project(client, title, create=None):
    found = [p for p in client.projects.list(title=title) if p.title == title]
    if found:
        return found[0]
    if create is None:
        return None
    return client.projects.create(title=title, **create)


def import_tasks(client, request):
    project = _project(
        client,
        request["title"],
        create={"label_config": request["label_config"], "description": request["description"]},
    )
    if project.label_config != request["label_config"]:  # a project made by an earlier version
        client.projects.update(id=project.id, label_config=request["label_config"])
    held = {(t.data or {}).get("task_key") for t in client.tasks.list(project=project.id, fields="task_only")}
    new = [task for task in request["tasks"] if task["data"]["task_key"] not in held]
    if new:
        client.projects.import_tasks(id=project.id, request=new, return_task_ids=True)
    return {"project_id": project.id, "imported": len(new), "held": len(request["tasks"]) - len(new)}


def export(client, request):
    project = _project(client, request["title"])
    if project is None:
        return {"project_id": None, "tasks": [], "users": {}}
    tasks = []
    for task in client.tasks.list(project=project.id, fields=TASK_FIELDS):
        data = dict(task.data or {})
        if isinstance(data.get("cells"), list):
            data["cells"] = [{k: v for k, v in cell.items() if k != "image"} for cell in data["cells"]]
        annotations = [a if isinstance(a, dict) else a.dict() for a in task.annotations or []]
        tasks.append({"id": task.id, "data": data, "annotations": annotations})
    users = {str(user.id): user.email for user in client.users.list()}
    return {"project_id": project.id, "tasks": tasks, "users": users}


COMMANDS = {"import": import_tasks, "export": export}


def main():
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        answer = COMMANDS[sys.argv[1]](_client(), json.load(sys.stdin))
    except httpx.TransportError as error:
        answer = {"error": "unreachable", "detail": f"{type(error).__name__}: {error}"}
    except ApiError as error:
        kind = "unauthorized" if error.status_code in (401, 403) else "api"
        body = error.body.get("detail", error.body) if isinstance(error.body, dict) else error.body
        answer = {"error": kind, "detail": f"HTTP {error.status_code}: {body}"}
    json.dump(answer, sys.stdout, default=str)
    sys.exit(2 if "error" in answer else 0)


if __name__ == "__main__":
    main()
