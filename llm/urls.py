from django.urls import path

from llm import api

urlpatterns = [
    path("api/llm/prompt/", api.PromptView.as_view(), name="api-prompt"),
]
