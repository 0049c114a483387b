from __future__ import annotations

from django.contrib import admin

from .models import Chunk, Document, StoredFile


class ChunkInline(admin.TabularInline):
    model = Chunk
    fields = ("position", "content")
    readonly_fields = ("position", "content")
    extra = 0
    can_delete = False
    show_change_link = False


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ("title", "company", "source", "chars", "created_at")
    list_filter = ("source", "company")
    search_fields = ("title",)
    readonly_fields = ("id", "company", "source", "content_type", "chars", "created_at")
    inlines = [ChunkInline]


@admin.register(StoredFile)
class StoredFileAdmin(admin.ModelAdmin):
    list_display = ("name", "company", "size", "content_type", "created_at")
    list_filter = ("company",)
    search_fields = ("name", "sha256")
    readonly_fields = ("id", "company", "name", "size", "content_type", "sha256", "path", "created_at")
